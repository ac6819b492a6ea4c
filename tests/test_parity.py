"""Parity statistics and verdicts (dyt_deploy.parity) on hand-made outputs.

The verdict is ``|got - ref| <= atol + rtol * |ref|`` everywhere plus "no NaN/Inf where the
reference is finite"; the other figures describe the gap. Each test states the arithmetic it
expects, so a changed operator or bound in the module fails here rather than in an export.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dyt_deploy.parity import (
    DEFAULT_TOLERANCES,
    PARITY_COLUMNS,
    OutputParity,
    ParityReport,
    compare_output,
    default_tolerances,
)

REF = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])


# -- tolerances -------------------------------------------------------------------------------------

def test_default_tolerances_per_precision_and_overrides() -> None:
    assert default_tolerances("fp32") == DEFAULT_TOLERANCES["fp32"] == (1e-4, 1e-3)
    assert default_tolerances("fp16") == DEFAULT_TOLERANCES["fp16"] == (2e-2, 2e-2)
    assert default_tolerances("fp32", atol=0.5) == (0.5, 1e-3)
    assert default_tolerances("fp32", rtol=0.25) == (1e-4, 0.25)
    assert default_tolerances("fp16", atol=0.0, rtol=0.0) == (0.0, 0.0)  # zero is a value, not "unset"


def test_unknown_precision_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        default_tolerances("int8")


# -- the verdict ----------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [-1.0, 1.0])
def test_outputs_off_in_either_direction_fail(offset: float) -> None:
    """All too low must fail as all too high does (a signed difference would pass the first)."""
    parity = compare_output("logits", REF, REF + offset, atol=1e-4, rtol=1e-3)
    assert not parity.passed
    assert parity.max_abs == pytest.approx(1.0)
    assert parity.mean_abs == pytest.approx(1.0)
    assert parity.p99_abs == pytest.approx(1.0)
    assert parity.problem == ""  # finite, just wrong


def test_identical_outputs_pass_with_perfect_figures() -> None:
    parity = compare_output("logits", REF, REF.copy(), atol=0.0, rtol=0.0)
    assert parity.passed
    assert (parity.max_abs, parity.mean_abs, parity.p99_abs, parity.max_rel) == (0.0, 0.0, 0.0, 0.0)
    assert parity.cosine == pytest.approx(1.0)
    assert parity.top1 == 1.0
    assert (parity.name, parity.shape, parity.samples, parity.problem) == ("logits", (2, 3), 1, "")


def test_the_bound_is_inclusive_and_atol_alone_decides_at_zero_reference() -> None:
    ref = np.zeros(4)
    assert compare_output("y", ref, ref + 0.5, atol=0.5, rtol=10.0).passed  # |0.5| <= 0.5 + 10 * 0
    assert not compare_output("y", ref, ref + 0.75, atol=0.5, rtol=10.0).passed
    assert not compare_output("y", ref, ref - 0.75, atol=0.5, rtol=10.0).passed


def test_rtol_scales_with_the_magnitude_of_the_reference() -> None:
    ref = np.array([2.0, -2.0])
    assert compare_output("y", ref, np.array([3.0, -3.0]), atol=0.0, rtol=0.5).passed  # 1 <= 0.5 * |2|
    assert not compare_output("y", ref, np.array([3.25, -2.0]), atol=0.0, rtol=0.5).passed
    assert not compare_output("y", ref, np.array([2.0, -3.25]), atol=0.0, rtol=0.5).passed
    # the reference's magnitude, not the output's: got = 4 is 2 away from 2, beyond 0.5 * |2| though 0.5 * |4| = 2
    assert not compare_output("y", ref, np.array([4.0, -2.0]), atol=0.0, rtol=0.5).passed


def test_atol_and_rtol_add_up() -> None:
    ref = np.array([4.0])
    assert compare_output("y", ref, np.array([5.5]), atol=0.5, rtol=0.25).passed  # 1.5 <= 0.5 + 0.25 * 4
    assert not compare_output("y", ref, np.array([5.75]), atol=0.5, rtol=0.25).passed


def test_one_bad_element_fails_the_output() -> None:
    got = REF.copy()
    got[1, 2] += 0.5
    parity = compare_output("y", REF, got, atol=1e-3, rtol=0.0)
    assert not parity.passed
    assert parity.max_abs == pytest.approx(0.5)
    assert parity.mean_abs == pytest.approx(0.5 / REF.size)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_output_where_the_reference_is_finite_fails_with_a_problem(bad: float) -> None:
    got = REF.copy()
    got[0, 0] = bad
    parity = compare_output("y", REF, got, atol=1e3, rtol=1e3)
    assert not parity.passed
    assert parity.problem == "NaN/Inf where the reference is finite"
    assert parity.max_abs == math.inf  # a NaN difference counts as infinitely far
    assert math.isnan(parity.cosine)


def test_non_finite_where_the_reference_is_also_non_finite_is_no_problem_line() -> None:
    ref = np.array([1.0, np.nan])
    parity = compare_output("y", ref, np.array([1.0, np.nan]), atol=1e-3, rtol=0.0)
    assert parity.problem == ""
    assert not parity.passed  # NaN is not within any tolerance of NaN


def test_shape_mismatch_fails_with_worst_figures() -> None:
    parity = compare_output("y", np.zeros((2, 3)), np.zeros((3, 2)), atol=1.0, rtol=1.0)
    assert parity.passed is False  # a bool: the JSON report says false, not null
    assert parity.name == "y"
    assert parity.shape == (3, 2)  # the runtime's shape
    assert parity.problem == "shape (3, 2) != reference (2, 3)"
    assert (parity.max_abs, parity.mean_abs, parity.p99_abs, parity.max_rel) == (math.inf,) * 4
    assert parity.cosine == -1.0
    assert parity.top1 is None
    assert parity.samples == 1


def test_figures_on_known_differences() -> None:
    ref = np.array([1.0, 2.0, 4.0, -8.0])
    got = np.array([1.5, 2.0, 3.0, -8.0])  # |diff| 0.5, 0, 1, 0; relative 0.5, 0, 0.25, 0
    parity = compare_output("y", ref, got, atol=0.0, rtol=0.0)
    assert parity.max_abs == 1.0
    assert parity.mean_abs == pytest.approx(0.375)
    assert parity.p99_abs == pytest.approx(np.percentile([0.5, 0.0, 1.0, 0.0], 99))
    assert parity.max_rel == pytest.approx(0.5)
    assert parity.cosine == pytest.approx(float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got)))
    assert parity.top1 is None  # rank 1: no classes


def test_p99_is_the_99th_percentile_not_the_maximum() -> None:
    ref = np.zeros(200)
    got = np.zeros(200)
    got[0] = 100.0  # one outlier in 200 elements sits above the 99th percentile
    parity = compare_output("y", ref, got, atol=0.0, rtol=0.0)
    assert parity.max_abs == 100.0
    assert parity.p99_abs == pytest.approx(np.percentile(np.abs(got), 99))
    assert parity.p99_abs < 1.0
    assert parity.mean_abs == pytest.approx(0.5)


def test_relative_error_floors_a_zero_reference() -> None:
    parity = compare_output("y", np.array([0.0, 10.0]), np.array([1e-7, 10.0]), atol=0.0, rtol=0.0)
    assert parity.max_rel == pytest.approx(1e-7 / 1e-6)  # floor 1e-6, finite
    assert compare_output("y", np.array([-4.0]), np.array([-5.0]), atol=0.0, rtol=0.0).max_rel == 0.25


def test_inputs_are_compared_in_float64() -> None:
    ref = np.array([1.0], dtype=np.float16)
    got = np.array([1.0009765625], dtype=np.float16)  # one fp16 ulp above 1
    parity = compare_output("y", ref, got, atol=0.0, rtol=0.0)
    assert parity.max_abs == 2.0**-10
    assert isinstance(parity.max_abs, float)


def test_empty_outputs_pass_with_zero_figures() -> None:
    parity = compare_output("y", np.zeros(0), np.zeros(0), atol=0.0, rtol=0.0)
    assert parity.passed
    assert (parity.max_abs, parity.mean_abs, parity.p99_abs, parity.max_rel) == (0.0, 0.0, 0.0, 0.0)


# -- cosine and top-1 -------------------------------------------------------------------------------

def test_cosine_of_opposite_orthogonal_and_zero_outputs() -> None:
    a = np.array([1.0, 2.0, -3.0])
    assert compare_output("y", a, -a, 1.0, 1.0).cosine == pytest.approx(-1.0)
    assert compare_output("y", np.array([1.0, 0.0]), np.array([0.0, 2.0]), 9.0, 9.0).cosine == pytest.approx(0.0)
    assert compare_output("y", np.zeros(3), np.zeros(3), 0.0, 0.0).cosine == 1.0
    assert compare_output("y", np.zeros(3), a, 9.0, 9.0).cosine == 1.0  # undefined; reported as no angle
    scaled = compare_output("y", a, 3 * a, 9.0, 9.0)
    assert scaled.cosine == pytest.approx(1.0)  # cosine ignores scale; max_abs does not
    assert scaled.max_abs == pytest.approx(6.0)


def test_cosine_is_nan_when_the_reference_has_a_nan() -> None:
    ref = np.array([1.0, np.nan])
    assert math.isnan(compare_output("y", ref, np.array([1.0, 1.0]), 1.0, 1.0).cosine)


def test_top1_is_the_share_of_rows_whose_argmax_agrees() -> None:
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    got = ref.copy()
    got[0] = [0.9, 0.1]  # one row of four flips its class
    assert compare_output("y", ref, got, 1.0, 1.0).top1 == 0.75
    assert compare_output("y", ref, ref, 1.0, 1.0).top1 == 1.0


def test_top1_over_the_last_axis_of_rank_3_outputs() -> None:
    ref = np.zeros((2, 3, 4))
    ref[..., 1] = 1.0  # class 1 everywhere
    got = ref.copy()
    got[1, 2] = [0.0, 0.0, 0.0, 5.0]  # one of six positions differs
    assert compare_output("y", ref, got, 9.0, 9.0).top1 == pytest.approx(5 / 6)


def test_top1_needs_two_classes_in_the_last_axis() -> None:
    assert compare_output("y", np.ones((3, 1)), np.ones((3, 1)), 0.0, 0.0).top1 is None
    assert compare_output("y", np.ones((3, 2)), np.ones((3, 2)), 0.0, 0.0).top1 == 1.0
    assert compare_output("y", np.ones((2, 3, 1)), np.ones((2, 3, 1)), 0.0, 0.0).top1 is None
    assert compare_output("y", np.ones((2, 1, 3)), np.ones((2, 1, 3)), 0.0, 0.0).top1 == 1.0


# -- merging samples ---------------------------------------------------------------------------------

def test_merge_keeps_the_worst_figures_and_averages_the_means() -> None:
    first = OutputParity("y", (1, 4), max_abs=0.1, mean_abs=0.02, p99_abs=0.08, max_rel=0.3, cosine=0.99,
                         top1=1.0, samples=1)
    second = OutputParity("y", (2, 4), max_abs=0.05, mean_abs=0.04, p99_abs=0.09, max_rel=0.1, cosine=0.999,
                          top1=0.5, samples=1)
    first.merge(second)
    assert first.max_abs == 0.1
    assert first.p99_abs == 0.09
    assert first.max_rel == 0.3
    assert first.cosine == 0.99
    assert first.mean_abs == pytest.approx(0.03)
    assert first.top1 == pytest.approx(0.75)
    assert first.samples == 2
    assert first.shape == (1, 4)  # the first sample's
    assert first.passed and first.problem == ""

    third = OutputParity("y", (1, 4), max_abs=0.2, mean_abs=0.09, p99_abs=0.01, max_rel=0.9, cosine=0.5,
                         top1=0.0, samples=1)
    first.merge(third)
    assert (first.max_abs, first.max_rel, first.cosine) == (0.2, 0.9, 0.5)
    assert first.mean_abs == pytest.approx((0.02 + 0.04 + 0.09) / 3)
    assert first.top1 == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3
    assert first.samples == 3


def test_merge_fails_once_any_sample_fails_and_keeps_the_first_problem() -> None:
    merged = OutputParity("y", (2,), samples=1)
    merged.merge(OutputParity("y", (2,), samples=1, passed=False, problem="NaN/Inf where the reference is finite"))
    merged.merge(OutputParity("y", (2,), samples=1, passed=True))
    merged.merge(OutputParity("y", (2,), samples=1, passed=False, problem="output missing"))
    assert not merged.passed
    assert merged.problem == "NaN/Inf where the reference is finite"
    assert merged.samples == 4


def test_merge_top1_when_only_some_samples_have_it() -> None:
    merged = OutputParity("y", (2,), samples=1)  # no top-1 (rank 1)
    merged.merge(OutputParity("y", (2,), samples=1, top1=0.5))
    assert merged.top1 == 0.5
    merged.merge(OutputParity("y", (2,), samples=1, top1=None))
    assert merged.top1 == 0.5  # a sample without top-1 leaves it alone


# -- the report ---------------------------------------------------------------------------------------

def test_empty_report_does_not_pass() -> None:
    assert not ParityReport(1e-4, 1e-3).passed


def test_report_compares_every_output_of_every_sample() -> None:
    report = ParityReport(atol=1e-3, rtol=0.0)
    ref = {"logits": REF, "hidden": np.ones((2, 2))}
    report.add_sample(ref, {"logits": REF + 1.0, "hidden": np.ones((2, 2))}, {"x": (2, 3)})
    report.add_sample(ref, {"logits": REF, "hidden": np.ones((2, 2))}, {"x": (4, 3)})
    assert not report.passed
    assert not report.outputs["logits"].passed  # the first sample's failure is not forgotten
    assert report.outputs["hidden"].passed
    assert report.outputs["logits"].samples == report.outputs["hidden"].samples == 2
    assert report.outputs["logits"].mean_abs == pytest.approx(0.5)
    assert report.shapes == [{"x": [2, 3]}, {"x": [4, 3]}]


def test_report_passes_when_every_output_passes() -> None:
    report = ParityReport(atol=1e-3, rtol=0.0)
    report.add_sample({"a": REF, "b": -REF}, {"a": REF + 1e-4, "b": -REF}, {"x": (2, 3)})
    assert report.passed
    assert list(report.outputs) == ["a", "b"]


def test_a_missing_output_fails_the_report() -> None:
    report = ParityReport(atol=1.0, rtol=1.0)
    report.add_sample({"a": REF, "b": REF}, {"a": REF}, {"x": (2, 3)})
    missing = report.outputs["b"]
    assert missing.passed is False
    assert missing.name == "b"
    assert missing.problem == "output missing"
    assert (missing.shape, missing.samples) == ((), 1)
    assert report.outputs["a"].passed
    assert not report.passed


def test_report_uses_its_own_tolerances() -> None:
    strict, loose = ParityReport(atol=0.1, rtol=0.0), ParityReport(atol=0.0, rtol=0.2)
    for report in (strict, loose):
        report.add_sample({"y": np.array([2.0])}, {"y": np.array([2.3])}, {})
    assert not strict.passed  # 0.3 > 0.1
    assert loose.passed  # 0.3 <= 0.2 * 2


def test_to_dict_is_json_ready_and_complete() -> None:
    report = ParityReport(atol=1e-3, rtol=1e-2)
    report.add_sample({"y": REF}, {"y": REF}, {"x": (2, 3)})
    data = report.to_dict()
    assert data["passed"] is True
    assert (data["atol"], data["rtol"]) == (1e-3, 1e-2)
    assert data["shapes"] == [{"x": [2, 3]}]
    assert set(data["outputs"]) == {"y"}
    assert data["outputs"]["y"]["passed"] is True
    assert data["outputs"]["y"]["shape"] == (2, 3)
    assert data["outputs"]["y"]["samples"] == 1
    assert set(data["outputs"]["y"]) == set(OutputParity.__dataclass_fields__)


def test_rows_show_each_output_with_its_verdict() -> None:
    report = ParityReport(atol=1e-3, rtol=0.0)
    ref = {"logits": REF, "vec": np.array([1.0, 2.0])}
    report.add_sample(ref, {"logits": REF, "vec": np.array([1.0, 2.5])}, {"x": (2, 3)})
    logits, vec = report.rows()
    assert len(logits) == len(PARITY_COLUMNS) == 8
    assert logits == ["logits", "2x3", "0", "0", "0", "1.000000", "100.0%", "ok"]
    assert vec[0:2] == ["vec", "2"]
    assert vec[2] == "0.5"  # max abs, 3 significant digits
    assert vec[4] == "0.25"  # max rel: 0.5 / 2
    assert vec[6] == "-"  # no top-1 for rank 1
    assert vec[7] == "FAIL"  # out of tolerance, no further problem to name


def test_rows_name_the_problem_of_a_failed_output() -> None:
    report = ParityReport(atol=1e-3, rtol=0.0)
    report.add_sample({"y": REF}, {}, {})
    ((*_, verdict),) = report.rows()
    assert verdict == "FAIL output missing"
