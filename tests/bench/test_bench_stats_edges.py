"""Edges of the benchmark statistics: one or two timings, zero latency, confidence 0 and 1, defaults, float32 input.

Written against the mutants `make mutation` found surviving in ``bench/stats.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dyt_deploy.bench.stats import LatencySummary, Ratio, median_interval, median_ratio, summarize

# even sizes: a bootstrap median of an even sample averages two values, so intervals move with the draws
NOISY_A = np.random.default_rng(11).exponential(1.0, 100) / 1e3 + 1e-3
NOISY_B = np.random.default_rng(12).exponential(1.0, 100) / 1e3 + 1e-3
NOISY_LONG = np.random.default_rng(13).exponential(1.0, 1000) / 1e3 + 1e-3


def test_one_timing_has_zero_spread_and_two_have_the_sample_std() -> None:
    assert summarize([0.004]).std_ms == 0.0  # not NaN (ddof=1 of one value), not a made-up figure
    two = summarize([0.002, 0.004])
    assert two.std_ms == pytest.approx(math.sqrt(2.0))  # ms: values 2 and 4, sample std sqrt(2)
    assert two.median_ms == pytest.approx(3.0)


def test_throughput_defaults_to_one_item_per_call() -> None:
    s = summarize([0.0005, 0.0005, 0.0005])  # 0.5 ms per call
    assert s.throughput == pytest.approx(2000.0)


def test_zero_latency_has_infinite_throughput_not_a_division_error() -> None:
    assert summarize([0.0, 0.0]).throughput == float("inf")


def test_empty_inputs_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="^no timings to summarize$"):
        summarize([])
    with pytest.raises(ValueError, match="^both samples need timings$"):
        median_ratio([], [0.001])
    with pytest.raises(ValueError, match="^both samples need timings$"):
        median_ratio([0.001], [])


def test_single_timings_give_a_point_ratio() -> None:
    r = median_ratio([0.002], [0.004])
    assert (r.ratio, r.low, r.high) == (0.5, 0.5, 0.5)


def test_float32_timings_are_computed_in_float64() -> None:
    timings = np.full(3, 0.1, dtype=np.float32)  # 0.1 in float32 is 0.100000001490116...
    exact_ms = float(np.float32(0.1)) * 1e3
    assert summarize(timings).median_ms == exact_ms
    assert median_interval(timings) == (exact_ms, exact_ms)
    # the median of an even-sized sample averages two values: in float32 that rounds differently
    variant, baseline = np.array([0.1, 0.2], np.float32), np.array([0.1, 0.7], np.float32)
    exact = np.median(variant.astype(np.float64)) / np.median(baseline.astype(np.float64))
    assert np.median(variant) / np.median(baseline) != exact  # the case is a real one
    assert median_ratio(variant, baseline).ratio == exact
    assert median_ratio(baseline, variant).ratio == 1 / exact


def test_ratio_defaults_are_seed_0_and_2000_resamples() -> None:
    default = median_ratio(NOISY_A, NOISY_B)
    assert default == median_ratio(NOISY_A, NOISY_B, confidence=0.95, resamples=2000, seed=0)
    assert default != median_ratio(NOISY_A, NOISY_B, seed=1)
    assert default != median_ratio(NOISY_A, NOISY_B, resamples=2001)
    assert default.confidence == 0.95
    assert median_ratio(NOISY_A, NOISY_B, confidence=0.8).confidence == 0.8


def test_ratio_interval_is_a_real_bootstrap_interval() -> None:
    r = median_ratio(NOISY_A, NOISY_B)
    assert r.ratio == pytest.approx(np.median(NOISY_A) / np.median(NOISY_B))
    assert r.low < r.ratio < r.high  # per-resample medians (not one pooled median): a spread
    narrow = median_ratio(NOISY_A, NOISY_B, confidence=0.5)
    assert r.low < narrow.low < narrow.high < r.high


def test_ratio_at_confidence_0_is_a_point_and_at_1_the_full_range() -> None:
    point = median_ratio(NOISY_A, NOISY_B, confidence=0.0)
    assert point.low == point.high  # both ends at the 50th percentile of the bootstrap ratios
    full = median_ratio(NOISY_A, NOISY_B, confidence=1.0)
    wide = median_ratio(NOISY_A, NOISY_B, confidence=0.99)
    assert full.low <= wide.low < wide.high <= full.high
    assert full.low < point.low < full.high


def test_resampling_draws_with_replacement() -> None:
    # Without replacement every resample is the sample itself: the interval collapses to a point.
    r = median_ratio([0.001, 0.002, 0.003, 0.004, 0.005], [0.002, 0.004, 0.006, 0.008, 0.010])
    assert r.low < r.high
    low, high = median_interval([0.001, 0.002, 0.003, 0.004, 0.005])
    assert low < high


def test_median_interval_of_constant_timings_is_that_value_in_ms() -> None:
    assert median_interval([0.002] * 5) == (pytest.approx(2.0), pytest.approx(2.0))


def test_median_interval_defaults_and_reproducibility() -> None:
    default = median_interval(NOISY_LONG)
    assert default == median_interval(NOISY_LONG)  # seeded
    assert default == median_interval(NOISY_LONG, confidence=0.95, resamples=2000, seed=0)
    assert default != median_interval(NOISY_LONG, seed=1)
    assert default != median_interval(NOISY_LONG, resamples=2001)


def test_median_interval_at_confidence_0_is_a_point_and_at_1_the_full_range() -> None:
    low0, high0 = median_interval(NOISY_LONG, confidence=0.0)
    assert low0 == high0
    low1, high1 = median_interval(NOISY_LONG, confidence=1.0)
    low99, high99 = median_interval(NOISY_LONG, confidence=0.99)
    assert low1 <= low99 < high99 <= high1
    assert low1 < low0 < high1
    low50, high50 = median_interval(NOISY_LONG, confidence=0.5)
    assert low99 < low50 < high50 < high99


def test_as_dict_holds_every_field() -> None:
    s = summarize([0.001, 0.003])
    assert s.as_dict() == {name: getattr(s, name) for name in LatencySummary.__dataclass_fields__}
    r = median_ratio([0.001], [0.002])
    assert r.as_dict() == {"ratio": 0.5, "low": 0.5, "high": 0.5, "confidence": 0.95}
    assert isinstance(r, Ratio)
