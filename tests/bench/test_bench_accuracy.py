"""``dyt-bench MODEL --data``: accuracy per variant x runtime x precision in every report, on real runners."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pytest
from reference_testlib import tiny_reference

from dyt_deploy.bench.api import benchmark
from dyt_deploy.bench.config import BenchConfig
from dyt_deploy.bench.report import write_reports
from dyt_deploy.errors import OptionError

QUICK = {"batches": (4,), "warmup": 1, "iters": 2, "optimizers": ("none",), "layer": False, "profile": False}


def bench_report(tmp_path: Path, **options: object) -> dict:
    paths = write_reports(benchmark(BenchConfig(**{**QUICK, **options})), tmp_path / "report")
    return {"json": json.loads(paths["json"].read_text()), "md": paths["md"].read_text(),
            "html": paths["html"].read_text()}


def rows_by(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["group"], r["variant"]): r for r in report["accuracy"]["rows"]}


def test_reference_twins_accuracy_on_every_runner_and_precision(tmp_path: Path) -> None:
    reference = tiny_reference("image")
    out = bench_report(tmp_path, model=reference.checkpoints["dyt"], data=reference.test_data,
                       variants=("layernorm", "dyt", "rmsnorm"), runners=("ort", "openvino", "torch"),
                       dtypes=("fp32", "bf16"))
    report, rows = out["json"], rows_by(out["json"])
    groups = {"pytorch", "ort/none", "openvino", "torch/fp32", "torch/bf16"}
    assert {g for g, _ in rows} == groups and report["accuracy"]["samples"] == 360
    for variant in ("dyt", "layernorm"):
        card_top1 = reference.card["variants"][variant]["test_top1"]
        assert rows[("pytorch", variant)]["accuracy"] == pytest.approx(card_top1)  # the trained twin, not a copy
        for group in groups:
            row = rows[(group, variant)]
            assert row["comparable"] and abs(row["accuracy"] - card_top1) <= 1 - row["agreement"] + 1e-9
            assert row["agreement"] >= (1.0 if row["precision"] == "fp32" else 0.95)
    assert rows[("torch/bf16", "dyt")]["precision"] == "bf16"
    assert not rows[("openvino", "rmsnorm")]["comparable"]  # converted from the DyT model: untrained
    assert "trained twin" in report["settings"]["variants_made"]["layernorm"]
    answer = next(e for e in report["summary"] if (e["runtime"], e["variant"], e["reference"]) ==
                  ("openvino", "dyt", "layernorm"))
    assert answer["accuracy"] == {"metric": "top1", "variant": pytest.approx(rows[("openvino", "dyt")]["accuracy"]),
                                  "reference": pytest.approx(rows[("openvino", "layernorm")]["accuracy"]),
                                  "comparable": True}
    sentence = (f"DyT x{answer['ratio']['ratio']:.2f} [{answer['ratio']['low']:.2f}, {answer['ratio']['high']:.2f}] "
                f"of LayerNorm's latency on OpenVINO (batch=4), accuracy {answer['accuracy']['variant']:.1%} vs "
                f"{answer['accuracy']['reference']:.1%}")
    assert sentence + "\n" in out["md"] and f'<p class="accuracy">{html.escape(sentence)}</p>' in out["html"]
    assert "of RMSNorm's latency on OpenVINO (batch=4), accuracy" in out["md"]
    assert "(not comparable: an untrained twin)" in out["md"] and "## Accuracy on the data" in out["md"]
    assert 'id="accuracy"' in out["html"]


def test_converted_twins_of_a_users_model_are_marked_not_comparable(tmp_path: Path) -> None:
    reference = tiny_reference("image")
    mine = tmp_path / "mine.pth"  # the same weights, outside a reference folder: no card, no trained twins
    shutil.copy(reference.checkpoints["dyt"], mine)
    out = bench_report(tmp_path, model=mine, data=reference.test_data, variants=("layernorm", "dyt"),
                       runners=("torch",))
    section = out["json"]["accuracy"]
    assert section["comparable"] == [] and not any(r["comparable"] for r in section["rows"])
    assert section["note"].startswith("Not comparable: layernorm, dyt are untrained")
    assert out["json"]["settings"]["variants_made"]["layernorm"].startswith("twin: ")
    assert all(e["accuracy"]["comparable"] is False for e in out["json"]["summary"])
    assert "(not comparable: an untrained twin)" in out["md"]


def test_text_twins_report_perplexity(tmp_path: Path) -> None:
    reference = tiny_reference("text")
    out = bench_report(tmp_path, model=reference.checkpoints["dyt"], data=reference.test_data,
                       variants=("rmsnorm", "dyt"), baseline="rmsnorm", runners=("torch",), seqs=(16,))
    section, rows = out["json"]["accuracy"], rows_by(out["json"])
    assert section["metric"] == "perplexity" and section["comparable"] == ["dyt", "rmsnorm"]
    for variant in ("dyt", "rmsnorm"):
        expected = reference.card["variants"][variant]["test_perplexity"]
        assert rows[("pytorch", variant)]["perplexity"] == pytest.approx(expected, rel=1e-4)
        assert rows[("torch", variant)]["agreement"] == 1.0
    assert "of RMSNorm's latency on PyTorch (batch=4,seq=16), perplexity " in out["md"]


def test_data_is_checked_with_the_other_options(tmp_path: Path) -> None:
    with pytest.raises(OptionError) as info:
        BenchConfig(data=tmp_path / "none.npz")
    assert ("data", f"{tmp_path / 'none.npz'}: no such file") in info.value.problems
    (tmp_path / "d.npz").write_bytes(b"")
    with pytest.raises(OptionError, match="text generation measures no accuracy"):
        BenchConfig(task="text-generation", data=tmp_path / "d.npz")
