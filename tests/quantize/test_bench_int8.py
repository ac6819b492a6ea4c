"""``dyt-bench --precisions fp32,int8`` on the tiny DyT twin: INT8 groups beside fp32, accuracy rows at
precision int8, and the report's INT8 section (INT8/fp32 per norm, DyT INT8 without data vs LayerNorm INT8)."""

from __future__ import annotations

import pytest
from reference_testlib import tiny_reference

from dyt_deploy.bench.api import benchmark
from dyt_deploy.bench.config import BenchConfig
from dyt_deploy.bench.int8 import int8_sentences
from dyt_deploy.bench.report import html_page, markdown, with_summary
from dyt_deploy.errors import OptionError


@pytest.fixture(scope="module")
def report():
    twins = tiny_reference("image")
    config = BenchConfig(model=twins.checkpoints["dyt"], variants=("dyt-folded", "layernorm"),
                         runners=("ort", "openvino"), precisions=("fp32", "int8"), optimizers=("none",),
                         batches=(2,), warmup=1, iters=3,
                         layer=False, profile=False, data=twins.test_data)
    return benchmark(config)


def test_int8_groups_are_timed_beside_fp32(report) -> None:
    groups = {(r["group"], r["variant"]) for r in report["results"]}
    for group in ("ort/none", "openvino", "ort-int8/no-data", "ort-int8/calibrated", "openvino-int8/no-data",
                  "openvino-int8/calibrated"):
        assert {(group, "dyt-folded"), (group, "layernorm")} <= groups


def test_the_int8_section_says_what_each_needed(report) -> None:
    section = report["int8"]
    needs = {(e["runtime"], e["variant"], e["setting"]): e["needs"] for e in section["vs_fp32"]}
    assert needs[("ort", "dyt-folded", "no-data")].startswith("no data (DyT-fed inputs at fixed scales")
    assert needs[("ort", "layernorm", "no-data")] == "no data (dynamic ranges)"
    assert needs[("openvino", "layernorm", "calibrated")] == "calibration data"
    assert {e["against"].split(" (")[0] for e in section["dyt_edge"]} == {"layernorm INT8 no-data",
                                                                         "layernorm INT8 calibrated"}
    assert all(e["verdict"] in ("faster", "slower", "no clear difference") for e in section["dyt_edge"])
    assert "the --data samples" in section["calibration"]
    lines = int8_sentences(report)
    assert any("dyt-folded INT8 no-data" in line and "of dyt-folded fp32" in line for line in lines)
    assert "## INT8: what it buys each norm" in markdown(with_summary(report))
    assert '<h2 id="int8">' in html_page(with_summary(report))


def test_accuracy_rows_of_int8_groups_are_int8(report) -> None:
    rows = [r for r in report["accuracy"]["rows"] if r["group"].startswith(("ort-int8", "openvino-int8"))]
    assert len(rows) == 8 and {r["precision"] for r in rows} == {"int8"}
    assert all(r["agreement"] >= 0.95 for r in rows)


def test_int8_needs_an_onnx_runner() -> None:
    with pytest.raises(OptionError, match="int8 is timed on the ort and openvino runners"):
        BenchConfig(runners=("torch",), precisions=("fp32", "int8"))
    with pytest.raises(OptionError, match="unknown precision"):
        BenchConfig(precisions=("fp8",))
