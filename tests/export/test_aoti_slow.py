"""AOTInductor builds beyond the shared package, each compiling its own (marked slow): a token model
with batch and seq dynamic, bf16 (and a verification failure that writes nothing), and dyt-bench
timing a package per variant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from aoti_testlib import FAST_COMPILE, TINY_VIT

from dyt_deploy.bench.api import run_benchmark
from dyt_deploy.check import check_model
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.export.aoti import AotiConfig, AotiVerificationFailed, build_aoti
from dyt_deploy.models import create_model
from dyt_deploy.parity import DEFAULT_TOLERANCES
from dyt_deploy.runners import create_runner, runner_for_folder

pytestmark = pytest.mark.slow
TINY_LLAMA = {"depth": 1, "dim": 32, "heads": 2, "ffn_dim": 64, "vocab_size": 64}


@pytest.fixture(autouse=True)
def fast_compile() -> Iterator[None]:
    with torch._inductor.config.patch(FAST_COMPILE):
        yield


def test_token_model_keeps_batch_and_seq_dynamic(tmp_path: Path) -> None:
    model = create_model("llama_tiny", norm="dyt", **TINY_LLAMA)
    save_checkpoint(model, tmp_path / "llama.pt")
    result = build_aoti(tmp_path / "llama.pt", config=AotiConfig(samples=2))  # a file beside the model
    assert result.package_path == tmp_path / "llama.pt2" and result.model_dir is None and result.parity.passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama.pt", "llama.pt2"]
    assert result.inputs == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}]
    assert result.outputs == [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", 64]}]
    assert result.manifest["dynamic"] == ["batch", "seq"] and result.notes == []
    tokens = np.random.default_rng(0).integers(0, 64, (3, 29), dtype=np.int64)  # sizes verification did not use
    with create_runner("aoti", result.package_path) as runner:
        got = runner.infer({"input_ids": tokens})["logits"]
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    reports = check_model(tmp_path / "llama.pt", ["aoti"], samples=2)  # dyt-check compiles its own package
    assert reports["aoti"].passed and [s["input_ids"] for s in reports["aoti"].shapes] == [[2, 16], [3, 11]]


def test_bf16_within_its_tolerance_and_a_failed_verification_writes_nothing(tmp_path: Path) -> None:
    save_checkpoint(create_model("vit_tiny", norm="dyt", **TINY_VIT), tmp_path / "vit.pt")
    repo = tmp_path / "repo"
    with pytest.raises(AotiVerificationFailed, match="beyond tolerance .*nothing written") as caught:
        build_aoti(tmp_path / "vit.pt", config=AotiConfig(dtype="bf16", atol=0.0, rtol=0.0, repository=repo))
    assert not repo.exists()
    logits = caught.value.result.parity.outputs["logits"]
    atol, rtol = DEFAULT_TOLERANCES["bf16"]
    assert 0 < logits.max_abs <= atol and logits.cosine > 0.999  # bf16 rounding, within the bf16 default
    assert caught.value.result.dtype == "bf16"


def test_dyt_bench_times_a_package_per_variant(tmp_path: Path) -> None:
    report = run_benchmark("vit_tiny", variants=["layernorm", "dyt"], runners=["aoti"], batches=[1, 2], warmup=1,
                           iters=3, layer=False, profile=False, workdir=tmp_path, **TINY_VIT)
    assert sorted(p.name for p in (tmp_path / "aoti").iterdir()) == ["dyt-fp32.pt2", "layernorm-fp32.pt2"]
    timed = {(r["group"], r["variant"], r["shape"]) for r in report["results"]}
    assert timed == {("aoti", v, f"batch={b}") for v in ("layernorm", "dyt") for b in (1, 2)}
    assert report["settings"]["runners"] == ["aoti"] and not report["settings"]["runners_skipped"]
    json.dumps(report)  # the report stays JSON


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of PyTorch")
def test_cuda_package_builds_loads_and_matches(tmp_path: Path) -> None:
    """On the H200 host with torch 2.11 (cu130) loading a CUDA package crashed the process with a
    segmentation fault, even for Linear+tanh (issue 15). The runner loads CUDA packages in a child
    process first, so there this test fails with the child's signal instead of killing pytest."""
    save_checkpoint(create_model("vit_tiny", norm="dyt", **TINY_VIT), tmp_path / "vit.pt")
    result = build_aoti(tmp_path / "vit.pt", config=AotiConfig(device="cuda", repository=tmp_path / "repo"))
    assert result.parity.passed and result.manifest["target"]["AOTI_DEVICE_KEY"] == "cuda"
    with runner_for_folder(result.model_dir) as runner:
        assert runner.device == "cuda"
        assert runner.infer({"pixel_values": np.zeros((4, 3, 16, 16), np.float32)})["logits"].shape == (4, 10)
