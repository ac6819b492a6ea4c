"""The benchmark's statistics on synthetic timings."""

from __future__ import annotations

import numpy as np
import pytest

from dyt_deploy.bench.stats import interleaved_schedule, median_interval, median_ratio, summarize


def test_summary_matches_numpy_on_known_values():
    seconds = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    s = summarize(seconds, items_per_call=8)
    assert s.count == 100
    assert s.median_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert s.p99_ms == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s.min_ms == pytest.approx(1.0)
    assert s.throughput == pytest.approx(8 / 0.0505)


def test_summary_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        summarize([])


def test_ratio_interval_covers_the_true_ratio_and_excludes_one():
    rng = np.random.default_rng(1)
    fast = rng.normal(9.0, 0.5, 300) / 1e3
    slow = rng.normal(10.0, 0.5, 300) / 1e3
    r = median_ratio(fast, slow)
    assert r.low < 0.9 < r.high
    assert r.high < 1.0  # clearly faster: the interval excludes 1
    assert r.low <= r.ratio <= r.high


def test_ratio_of_equal_distributions_includes_one_and_is_reproducible():
    rng = np.random.default_rng(2)
    a, b = rng.normal(5, 1, 200) / 1e3, rng.normal(5, 1, 200) / 1e3
    first, second = median_ratio(a, b), median_ratio(a, b)
    assert first == second  # seeded bootstrap
    assert first.low < 1.0 < first.high


def test_median_interval_brackets_the_median():
    values = np.random.default_rng(3).exponential(1.0, 500) / 1e3
    low, high = median_interval(values)
    assert low < np.median(values) * 1e3 < high


def test_interleaving_runs_every_variant_once_per_round_and_rotates():
    order = interleaved_schedule(["a", "b", "c"], 4)
    assert len(order) == 12
    rounds = [order[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert [r[0] for r in rounds] == ["a", "b", "c", "a"]  # each round starts one later
    assert interleaved_schedule(["a", "b"], 2, rotate=False) == ["a", "b", "a", "b"]


def test_headline_takes_the_fastest_entry_of_each_side_across_groups():
    from dyt_deploy.bench.harness import Timings, headline

    rng = np.random.default_rng(4)
    timings = Timings()
    medians = {("ort/none", "layernorm"): 10.0, ("ort/fused", "layernorm"): 8.0, ("ort/none", "dyt"): 9.0,
               ("ort/fused", "dyt-folded"): 7.6, ("torch", "dyt"): 1.0}  # torch is not an onnxruntime group
    for (group, variant), median in medians.items():
        for value in rng.normal(median, 0.01, 30) / 1e3:
            timings.add(group, "batch=1", variant, value)
    (row,) = headline(timings, "layernorm", ["dyt", "dyt-folded"])
    assert row["baseline"] == "layernorm (ort/fused)" and row["contender"] == "dyt-folded (ort/fused)"
    assert row["ratio"]["ratio"] == pytest.approx(0.95, abs=0.01)
    assert row["ratio"]["high"] < 1.0
