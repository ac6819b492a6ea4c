"""The one verdict function (bench reports, the service's comparison and live view): faster/slower only
with enough samples and an interval that excludes 1; otherwise how many rounds would settle it; a loaded
machine is named beside the figure."""

from __future__ import annotations

import numpy as np
import pytest

from dyt_deploy.bench.stats import (
    MIN_SAMPLES,
    MachineLoad,
    judge,
    load_from,
    machine_load,
    median_ratio,
    rounds_to_exclude_one,
)


def test_few_rounds_with_an_interval_clear_of_one_is_still_no_clear_difference() -> None:
    # dyt-bench's OpenVINO batch 1 after 10 rounds on a loaded machine
    verdict = judge({"ratio": 1.772, "low": 1.233, "high": 2.535}, samples=10)
    assert verdict.verdict == "no clear difference" and not verdict.clear
    assert verdict.rounds_to_settle == MIN_SAMPLES
    assert f"10 rounds, under the minimum of {MIN_SAMPLES}" in verdict.note
    assert f"about {MIN_SAMPLES} rounds would settle it" in verdict.note


def test_enough_rounds_and_an_interval_clear_of_one_gives_a_verdict() -> None:
    assert judge({"ratio": 0.9, "low": 0.85, "high": 0.95}, samples=MIN_SAMPLES).verdict == "faster"
    slower = judge({"ratio": 1.2, "low": 1.1, "high": 1.3}, samples=50)
    assert slower.verdict == "slower" and slower.clear and slower.note == "" and slower.rounds_to_settle is None


def test_an_interval_holding_one_estimates_the_rounds_from_the_spread() -> None:
    # ×0.957 [0.80, 1.16] after 30 rounds: the half-width towards 1 is log(1/0.957)... far wider than the gap
    verdict = judge({"ratio": 0.957, "low": 0.80, "high": 1.16}, samples=30)
    expected = 30 * (np.log(1.16 / 0.957) / np.log(1 / 0.957)) ** 2
    assert verdict.verdict == "no clear difference"
    assert verdict.rounds_to_settle == pytest.approx(expected, abs=1)
    assert f"about {verdict.rounds_to_settle} rounds" in verdict.note and "holds 1 after 30 rounds" in verdict.note


def test_the_estimate_rests_on_the_interval_narrowing_as_one_over_the_root_of_the_rounds() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(np.log(0.95), 0.2, 1600), rng.lognormal(0.0, 0.2, 1600)
    widths = {n: np.log(r.high / r.low) for n in (100, 400, 1600) for r in [median_ratio(a[:n], b[:n])]}
    assert 1.6 < widths[100] / widths[400] < 2.5 and 1.6 < widths[400] / widths[1600] < 2.5
    few = median_ratio(a[:30], b[:30])
    assert few.low < 1 < few.high
    needed = rounds_to_exclude_one(few.ratio, few.low, few.high, 30)
    assert needed is not None and needed > 30
    at_twice = median_ratio(a[:2 * needed], b[:2 * needed])
    assert at_twice.high < 1  # twice the estimate settles it


def test_a_ratio_within_one_percent_of_one_cannot_be_settled() -> None:
    verdict = judge({"ratio": 1.004, "low": 0.95, "high": 1.06}, samples=100)
    assert verdict.rounds_to_settle is None and "more rounds would not settle it" in verdict.note


def test_a_loaded_machine_is_named_beside_the_figure() -> None:
    load = MachineLoad(before=3.5, after=4.1, cpus=2)
    verdict = judge({"ratio": 0.9, "low": 0.85, "high": 0.95}, samples=40, load=load)
    assert verdict.verdict == "faster" and verdict.loaded
    assert verdict.note == "loaded machine: load average 3.50 → 4.10 on 2 CPUs"
    assert not judge({"ratio": 0.9, "low": 0.85, "high": 0.95}, 40, MachineLoad(0.5, 1.9, 2)).loaded
    assert load_from(load.as_dict()) == load and load_from(None) is None


def test_machine_load_reads_this_machine() -> None:
    load = machine_load(before=0.0)
    assert load.cpus >= 1 and load.after >= 0.0 and load.as_dict()["loaded"] == (load.after > load.cpus)
