"""dyt-bench --task text-generation: a short real run on a tiny llama decoder (DyT vs RMSNorm on
torch, onnxruntime and onnxruntime-genai) through the CLI, and the task's option checks."""

from __future__ import annotations

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from dyt_deploy.bench.config import BenchConfig
from dyt_deploy.bench.report import REPORT_SCHEMA
from dyt_deploy.cli import bench_app
from dyt_deploy.errors import OptionError

TINY = ["--set", "dim=64", "--set", "depth=2", "--set", "heads=4", "--set", "ffn_dim=128", "--set", "vocab_size=300"]


def test_short_real_generation_run_writes_valid_reports(tmp_path) -> None:
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_app, [
        "--task", "text-generation", "--model", "llama_tiny", *TINY, "--seq", "8,24", "--batch", "1,2",
        "--warmup", "1", "--iters", "2", "--decode-tokens", "3", "--threads", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["settings"]["baseline"] == "rmsnorm" and report["settings"]["variants"] == ["rmsnorm", "dyt"]
    rows = {(r["group"], r["shape"], r["variant"]): r for r in report["results"]}
    shapes = ["prefill,batch=1,prompt=8", "prefill,batch=1,prompt=24", "decode,batch=1,context=64",
              "decode,batch=2,context=64"]
    assert set(rows) == {(g, s, v) for g in ("torch", "ort", "ort-genai") for s in shapes for v in ("rmsnorm", "dyt")}
    decode = rows[("ort", "decode,batch=2,context=64", "dyt")]
    assert decode["summary"]["count"] == 2 * 3  # iters x decode steps
    assert decode["summary"]["throughput"] == pytest.approx(2 / (decode["summary"]["median_ms"] / 1e3))
    prefill = rows[("torch", "prefill,batch=1,prompt=24", "dyt")]
    assert prefill["summary"]["throughput"] == pytest.approx(24 / (prefill["summary"]["median_ms"] / 1e3))
    assert rows[("ort", "decode,batch=1,context=64", "dyt")]["ratio_to_baseline"]["ratio"] > 0
    assert report["memory"]["dyt"]["parameters"] > 0 and report["memory"]["peak_rss_mb"] > 0
    assert any(e["variant"] == "dyt" and e["reference"] == "rmsnorm" for e in report["summary"])
    assert "ratio to rmsnorm" in result.output and (out / "report.html").is_file()


@pytest.mark.parametrize(("options", "field"), [
    ({"runners": ("openvino",)}, "runners"), ({"decode_tokens": 0}, "decode_tokens"),
    ({"task": "translate"}, "task"), ({"device": "cuda", "runners": ("ort",)}, "runners"),
])
def test_bad_generation_options_are_named(options: dict, field: str) -> None:
    with pytest.raises(OptionError) as caught:
        BenchConfig(**{"task": "text-generation", **options})
    assert field in [f for f, _ in caught.value.problems]


def test_the_task_takes_its_own_defaults() -> None:
    config = BenchConfig(task="text-generation")
    assert (config.arch, config.variants, config.baseline, config.runners) == (
        "llama_small", ("rmsnorm", "dyt"), "rmsnorm", ("torch", "ort", "ort-genai"))
    assert BenchConfig(task="text-generation", device="cuda").runners == ("torch",)


def test_a_model_without_a_cache_is_refused(tmp_path) -> None:
    result = CliRunner().invoke(bench_app, ["--task", "text-generation", "--model", "vit_tiny", "--variants",
                                            "layernorm,dyt", "--baseline", "layernorm", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "llama decoders" in result.output
