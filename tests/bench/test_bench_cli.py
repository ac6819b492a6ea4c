"""A short real run of dyt-bench on a tiny ViT through the CLI."""

from __future__ import annotations

import json

import jsonschema
from typer.testing import CliRunner

from dyt_deploy.bench.report import REPORT_SCHEMA
from dyt_deploy.cli import bench_app


def test_short_real_run_writes_valid_reports(tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_app, [
        "--model", "vit_tiny", "--set", "depth=1", "--set", "img_size=32", "--variants", "layernorm,dyt,dyt-folded",
        "--runners", "ort,torch", "--batch", "1,2", "--warmup", "1", "--iters", "3", "--threads", "1",
        "--optimizers", "none,ort-transformers", "--layer-tokens", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    groups = {(r["group"], r["shape"], r["variant"]) for r in report["results"]}
    assert ("ort/ort-transformers", "batch=2", "dyt-folded") in groups
    assert ("torch", "batch=1", "dyt") in groups and ("torch", "batch=1", "dyt-folded") not in groups
    assert all(r["summary"]["count"] == 3 for r in report["results"])
    assert report["settings"]["fusions"]["layernorm/ort-transformers"]  # LN got fusions...
    assert not report["settings"]["fusions"].get("dyt/ort-transformers", {}).get("SkipLayerNormalization")
    assert 0 < report["profile"]["dyt/none"]["norm_share"] < 1
    assert report["layer"]["copy_gbps"] > 0
    assert {(row["tokens"], row["width"]) for row in report["layer"]["rows"]} == {(64, 192), (64, 1024)}
    assert (out / "report.html").read_text().count("<svg") >= 3
    assert "ratio to layernorm" in result.output
    assert result.output.index("the answer") < result.output.index("median latency")  # the answer first


def test_bad_arguments_are_clear_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(bench_app, ["--variants", "layernorm,batchnorm", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "unknown variant 'batchnorm'" in result.output
    result = runner.invoke(bench_app, ["--batch", "one", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "integers" in result.output
    result = runner.invoke(bench_app, ["--set", "depth", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
