"""benchmarks/kernel_call_cost.py (the per-call cost step of scripts/gpu_check.sh), run on the CPU at toy sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton not installed")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_call_cost.py"


def test_call_cost_report_has_every_provider_its_ratio_and_the_goal(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # CPU tensors: the reference, fast
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--shapes", "1x64,4x64", "--calls", "3",
                           "--rounds", "2", "--warmup", "1", "-o", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "call_cost.json").read_text())
    providers = ["rms_norm", "layer_norm", "dyt-eager", "dyt-python", "dyt-module", "dyt-op"]
    assert [(r["shape"], r["provider"]) for r in report["results"]] == [
        (shape, p) for shape in ("1x64 bf16", "4x64 bf16") for p in providers]
    for r in report["results"]:
        assert 0 < r["low_us"] <= r["us_per_call"] <= r["high_us"]
        assert r["ratio_low"] <= r["ratio_to_rms_norm"] <= r["ratio_high"]
        if r["provider"] == "rms_norm":
            assert r["ratio_to_rms_norm"] == 1.0
    assert len(report["goal"]) == 6 and all("goal <= 1.3x" in line for line in report["goal"])
    assert set(report["skipped"]) == {"1x64 bf16 triton-bare", "4x64 bf16 triton-bare"}
    assert "| 4x64 bf16 | dyt-op |" in (tmp_path / "call_cost.md").read_text()


def test_call_cost_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "use --device cpu" in proc.stderr
