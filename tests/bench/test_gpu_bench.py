"""The GPU suite's code (dyt-bench --device cuda), run on the CPU at toy sizes: rows, bytes, ratios, goals, reports.

The figures themselves only mean something on a GPU; tests marked ``gpu`` run the suite there.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from dyt_deploy.bench import gpu
from dyt_deploy.bench.gpu_report import GPU_REPORT_SCHEMA, markdown, write_gpu_reports
from dyt_deploy.cli import bench_app

pytest.importorskip("triton", reason="Triton not installed (pip install 'dyt-deploy[test]')")

CPU_PROVIDERS = ["copy", "layernorm", "rmsnorm", "rmsnorm-hf", "dyt-eager", "dyt-triton", "dyt-add-triton"]
TOY_DECODER = {"dim": 64, "depth": 2, "heads": 2, "ffn_dim": 128, "vocab_size": 256}


@pytest.fixture(scope="module")
def report() -> dict:
    return gpu.run_gpu_benchmark(
        "cpu", cases=[gpu.LayerCase(32, 96, "fp32"), gpu.LayerCase(16, 64, "bf16")], providers=CPU_PROVIDERS,
        layer_rounds=4, warmup=1, decoder_config=TOY_DECODER, seq=16, decoder_rounds=3, min_bytes=40_000,
        decoder_variants=["rmsnorm/eager", "dyt/eager", "dyt/triton"])


def test_layer_rows_cover_every_case_and_provider(report):
    rows = report["layer"]
    assert [(r["case"], r["provider"]) for r in rows] == [
        (case, p) for case in ("32x96 fp32", "16x64 bf16") for p in CPU_PROVIDERS]
    for r in rows:
        assert 0 < r["p10_us"] <= r["median_us"] <= r["p90_us"]
        assert r["cuda_graph"] is False and r["samples"] == 4


def test_bandwidth_counts_the_bytes_each_provider_moves(report):
    for r in report["layer"]:
        nbytes = r["tokens"] * r["width"] * (4 if r["dtype"] == "fp32" else 2)
        tensors = 4 if r["provider"] == "dyt-add-triton" else 2  # x (+ residual) in, y (+ h) out
        assert r["gbps"] == pytest.approx(tensors * nbytes / (r["median_us"] * 1e-6) / 1e9)
        assert r["calls_per_sample"] == max(2, math.ceil(40_000 / nbytes))
        copy = next(c for c in report["layer"] if c["case"] == r["case"] and c["provider"] == "copy")
        assert r["copy_fraction"] == pytest.approx(r["gbps"] / copy["gbps"])


def test_decoder_ratios_pair_each_dyt_variant_with_rmsnorm_in_the_same_mode(report):
    dec = report["decoder"]
    assert [r["variant"] for r in dec["results"]] == ["rmsnorm/eager", "dyt/eager", "dyt/triton"]
    assert {(q["variant"], q["baseline"]) for q in dec["ratios"]} == {
        ("dyt/eager", "rmsnorm/eager"), ("dyt/triton", "rmsnorm/eager")}
    for q in dec["ratios"]:
        assert q["low"] <= q["ratio"] <= q["high"]
    assert dec["config"]["max_seq_len"] >= 16 and dec["parameters"] > 0


def test_hf_rmsnorm_is_rmsnorm():
    from dyt_deploy.bench.gpu import _hf_rmsnorm

    x, w = torch.randn(4, 32), torch.rand(32) + 0.5
    torch.testing.assert_close(_hf_rmsnorm(x, w, 1e-6), torch.nn.functional.rms_norm(x, (32,), w, 1e-6))


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown decoder variant"):
        gpu.decoder_bench(TOY_DECODER, seq=8, variants=["dyt/fast"], device="cpu")
    with pytest.raises(ValueError, match="unknown layer provider"):
        gpu.gpu_layer_bench([gpu.LayerCase(4, 8, "fp32")], ["dyt-magic"], rounds=1, device="cpu", min_bytes=1)


def _layer_row(provider, fraction, case=(4096, 4096, "bf16")):
    return {"provider": provider, "tokens": case[0], "width": case[1], "dtype": case[2],
            "copy_fraction": fraction, "gbps": 2500.0 * fraction}


@pytest.mark.parametrize(("fraction", "ratio", "met"), [(0.9, 0.99, [True, True]), (0.8, 1.02, [False, False])])
def test_goals_judge_the_two_figures_the_issue_sets(fraction, ratio, met):
    decoder = {"ratios": [{"variant": "dyt/compiled", "baseline": "rmsnorm/compiled", "ratio": ratio,
                           "low": ratio - 0.01, "high": ratio + 0.01}]}
    rows = [_layer_row("dyt-triton", fraction), _layer_row("dyt-triton", 0.99, (4096, 1024, "bf16"))]
    goals = gpu.goals(rows, decoder)
    assert [g["met"] for g in goals] == met
    assert f"{fraction:.1%}" in goals[0]["measured"]


def test_report_validates_and_reads(report, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, GPU_REPORT_SCHEMA)
    md = markdown(report)
    assert "no GPU: figures are not GPU figures" in md
    assert "| 32x96 fp32 | dyt-add-triton |" in md and "| dyt/triton |" in md
    paths = write_gpu_reports(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(report))
    assert paths["html"].read_text().count("<svg") == 3  # two layer cases and the decoder
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_report.html", "gpu_report.json",
                                                                   "gpu_report.md"]


def test_a_report_that_cannot_be_written_leaves_the_old_one(report, tmp_path):
    write_gpu_reports(report, tmp_path)
    before = (tmp_path / "gpu_report.md").read_text()
    broken = {**report, "facts": {}}  # markdown() needs the facts
    with pytest.raises(KeyError):
        write_gpu_reports(broken, tmp_path)
    assert (tmp_path / "gpu_report.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_report.html", "gpu_report.json", "gpu_report.md"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU is visible")
@pytest.mark.parametrize(("suite", "advice"), [("kernels", "drop --device"), ("model", "benchmark on the CPU")])
def test_cli_refuses_cuda_without_a_gpu_and_says_what_to_do(suite: str, advice: str, tmp_path):
    result = CliRunner().invoke(bench_app, ["--device", "cuda", "--suite", suite, "--no-decoder", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "no CUDA device is visible" in " ".join(result.output.split()) and advice in result.output


def test_cli_refuses_unknown_devices():
    result = CliRunner().invoke(bench_app, ["--device", "tpu"])
    assert result.exit_code == 2 and "cpu, cuda or cuda:N" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_suite_runs_with_graphs_and_compiled_variants(tmp_path):
    result = CliRunner().invoke(bench_app, [
        "--device", "cuda", "--suite", "kernels", "--tokens", "1024", "--widths", "1024", "--dtypes", "bf16,fp32",
        "--iters", "5",
        "--warmup", "2", "--seq", "256", "--set", "dim=256", "--set", "depth=2", "--set", "heads=4",
        "--set", "ffn_dim=512", "--set", "vocab_size=1024", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["facts"]["gpu"] and all(r["cuda_graph"] for r in report["layer"])
    assert {r["variant"] for r in report["decoder"]["results"]} == set(gpu.DECODER_VARIANTS)
