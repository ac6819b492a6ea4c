"""Every runner available here gives the same outputs as PyTorch eager on the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.export import export_onnx
from dyt_deploy.models import create_model
from dyt_deploy.runners import MissingBackendError, RunnerError
from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from dyt_deploy.runners.openvino_runner import OpenVinoRunner
from dyt_deploy.runners.torch_runner import TorchRunner


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A DyT ViT with non-trivial gamma/beta, its model.pt and its ONNX export."""
    root = tmp_path_factory.mktemp("conformance")
    model = create_model("vit_tiny", norm="dyt", depth=1, img_size=32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.2)
    path = save_checkpoint(model, root / "model.pt")
    onnx_path = export_onnx(path, root / "model.onnx").onnx_path
    return model, onnx_path


def _feed(batch: int, seed: int) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=generator).numpy()}


def _reference(model, feed):
    with torch.no_grad():
        return model(torch.from_numpy(feed["pixel_values"])).numpy()


def _runners(model, onnx_path):
    yield TorchRunner(model, ["pixel_values"], ["logits"])
    yield TorchRunner(model, ["pixel_values"], ["logits"], compile=True)
    yield OnnxRuntimeRunner(onnx_path)
    yield OnnxRuntimeRunner(onnx_path, opt_level="disable")
    yield OpenVinoRunner(onnx_path, threads=1)
    yield OpenVinoRunner(onnx_path, hint="throughput")


def test_every_cpu_runner_matches_pytorch_eager(tiny):
    model, onnx_path = tiny
    for runner in _runners(model, onnx_path):
        # two batch sizes, except for torch.compile: a second shape is a second compile (~10 s on
        # the CPU) and tests Inductor's dynamic shapes, not the runner
        feeds = [_feed(2, 0), _feed(2 if runner.name == "torch-compile" else 3, 1)]
        with runner:
            for feed in feeds:
                got = runner.infer(feed)
                assert set(got) == {"logits"}, runner.name
                np.testing.assert_allclose(got["logits"], _reference(model, feed), atol=1e-4, rtol=1e-3,
                                           err_msg=runner.name)
                assert runner.last_inference_time is not None and runner.last_inference_time > 0
        assert not runner.is_active


def test_infer_before_activate_is_refused(tiny):
    _, onnx_path = tiny
    for runner in (OnnxRuntimeRunner(onnx_path), OpenVinoRunner(onnx_path)):
        with pytest.raises(RunnerError, match="activate"):
            runner.infer(_feed(1, 0))


def test_missing_input_names_the_input(tiny):
    model, onnx_path = tiny
    for runner in (OnnxRuntimeRunner(onnx_path), OpenVinoRunner(onnx_path),
                   TorchRunner(model, ["pixel_values"], ["logits"])):
        with runner, pytest.raises(RunnerError, match="pixel_values"):
            runner.infer({"wrong": np.zeros((1, 3, 32, 32), np.float32)})


def test_gpu_provider_without_gpu_names_the_extra(tiny):
    _, onnx_path = tiny
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(MissingBackendError, match="gpu extra"):
        OnnxRuntimeRunner(onnx_path, provider="cuda").activate()


def test_unknown_provider_and_level_are_refused(tiny):
    _, onnx_path = tiny
    with pytest.raises(RunnerError, match="known: cpu"):
        OnnxRuntimeRunner(onnx_path, provider="tpu")
    with pytest.raises(RunnerError, match="known: disable"):
        OnnxRuntimeRunner(onnx_path, opt_level="max")


@pytest.mark.gpu
def test_cuda_runners_match_pytorch(tiny):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    model, onnx_path = tiny
    feed = _feed(2, 0)
    expected = _reference(model, feed)
    for compile_ in (False, True):
        with TorchRunner(model, ["pixel_values"], ["logits"], compile=compile_, device="cuda") as runner:
            np.testing.assert_allclose(runner.infer(feed)["logits"], expected, atol=1e-3, rtol=1e-3)
    model.cpu()
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime without CUDA (install the gpu extra)")
    with OnnxRuntimeRunner(onnx_path, provider="cuda") as runner:
        np.testing.assert_allclose(runner.infer(feed)["logits"], expected, atol=1e-3, rtol=1e-3)


def test_torch_triton_runner_runs_the_kernels_and_matches_eager(tiny):
    """Eager with the Triton DyT kernels (interpreted on the CPU here, compiled on a GPU) vs eager."""
    pytest.importorskip("triton", reason="Triton not installed")
    model, _ = tiny
    feed = _feed(2, 7)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with TorchRunner(model, ["pixel_values"], ["logits"], kernels=True, device=device) as runner:
        got = runner.infer(feed)["logits"]
        assert runner.name == "torch-triton" and runner.kernel_sites == 3  # 2 block norms + the final norm
    np.testing.assert_allclose(got, _reference(model.cpu(), feed), rtol=1e-4, atol=1e-4)
    assert not any(type(m).__name__ == "KernelDynamicTanh" for m in model.modules()), "the original is untouched"


def test_torch_triton_runner_says_what_it_needs(tiny, monkeypatch):
    model, _ = tiny
    if torch.cuda.is_available():
        pytest.skip("with a GPU the kernels can run")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(MissingBackendError, match="TRITON_INTERPRET=1"):
        TorchRunner(model, ["pixel_values"], ["logits"], kernels=True).activate()
    with pytest.raises(ValueError, match="choose compile or kernels"):
        TorchRunner(model, ["pixel_values"], ["logits"], kernels=True, compile=True)


def test_torch_triton_runner_refuses_a_model_without_dyt():
    pytest.importorskip("triton", reason="Triton not installed")
    model = create_model("vit_tiny", norm="layernorm", depth=1, img_size=32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runner = TorchRunner(model, ["pixel_values"], ["logits"], kernels=True, device=device)
    if device == "cpu" and not __import__("os").environ.get("TRITON_INTERPRET"):
        pytest.skip("needs the interpreter or a GPU")
    with pytest.raises(RunnerError, match="no channels-last DynamicTanh"):
        runner.activate()
