"""Real TensorRT engines on a real GPU: every DyT form builds and matches the formula; manifests guard loading.

Skipped, with the reason, where TensorRT or a CUDA device is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engine_testlib import make_dyt_onnx, make_model_folder, reference

from dyt_deploy.runners.base import RunnerError
from dyt_deploy.runners.tensorrt import TensorRTRunner
from dyt_deploy.tensorrt.build import build_engine
from dyt_deploy.tensorrt.manifest import EngineIncompatibleError, gather_host_facts, manifest_path_for
from dyt_deploy.tensorrt.profiles import parse_profiles

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


@pytest.fixture(scope="module", autouse=True)
def tensorrt_and_gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed (pip install 'dyt-deploy[tensorrt]')")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device, or PyTorch is a CPU-only build")


@pytest.fixture
def python_plugins() -> None:
    pytest.importorskip("tensorrt.plugin", reason="TensorRT < 10.6: no Python plugin API (tensorrt.plugin)")


def run(plan: Path, x: np.ndarray) -> np.ndarray:
    with TensorRTRunner(plan) as runner:
        y = runner.infer({"x": x})["y"]
        assert runner.last_inference_time is not None and runner.last_inference_time > 0
    return y


def sample(shape: tuple[int, ...], dtype: type = np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, shape).astype(dtype)


@pytest.mark.parametrize("form, overloads", [
    ("pattern", ["", "no_bias", "tanh_only"]),
    ("function", ["", "no_bias", "tanh_only"]),  # several overloads: inlined before parsing
    ("function", [""]),  # one overload: TensorRT's parser inlines the local function itself
])
def test_forms_match_the_formula(tmp_path: Path, form: str, overloads: list[str]) -> None:
    path = tmp_path / "m.onnx"
    sites = make_dyt_onnx(path, form, overloads)
    result = build_engine(path)
    for shape in ((2, 5, 8), (7, 33, 8)):
        x = sample(shape)
        np.testing.assert_allclose(run(result.plan_path, x), reference(x, sites), rtol=1e-5, atol=1e-5)


def test_plugin_form_matches_the_formula(tmp_path: Path, python_plugins: None) -> None:
    path = tmp_path / "m.onnx"
    sites = make_dyt_onnx(path, "plugin", ["", "no_bias", "tanh_only"])
    result = build_engine(path)
    assert result.manifest.plugin is True
    x = sample((3, 9, 8))
    np.testing.assert_allclose(run(result.plan_path, x), reference(x, sites), rtol=1e-5, atol=1e-5)


def test_plugin_form_channels_first(tmp_path: Path, python_plugins: None) -> None:
    path = tmp_path / "m.onnx"
    sites = make_dyt_onnx(path, "plugin", [""], shape=["batch", 4, 6, 6], param_shape=[4, 1, 1])
    result = build_engine(path)
    x = sample((2, 4, 6, 6))
    np.testing.assert_allclose(run(result.plan_path, x), reference(x, sites), rtol=1e-5, atol=1e-5)


def test_fp16_onnx_gives_an_fp16_engine(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    sites = make_dyt_onnx(path, "pattern", [""], dtype=np.float16)
    result = build_engine(path)
    assert result.manifest.precision == "fp16"
    x = sample((2, 4, 8), np.float16)
    y = run(result.plan_path, x)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), reference(x, sites), atol=1e-2)


def test_manifest_records_this_host(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "repo", config={"max_seq_len": 64})
    result = build_engine(folder, timing_cache=tmp_path / "timing.cache")
    host = gather_host_facts()
    manifest = result.manifest
    assert (manifest.tensorrt_version, manifest.gpu_name, manifest.compute_capability) == (
        host.tensorrt_version, host.gpu_name, host.compute_capability)
    assert manifest.profiles["x"]["max"] == [32, 64, 8]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert (folder / "1" / "model.plan").is_file()


def test_shapes_outside_the_profile_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    result = build_engine(path, profiles=parse_profiles(["x=1x1x8:2x4x8:4x16x8"]))
    with TensorRTRunner(result.plan_path) as runner:
        runner.infer({"x": sample((4, 16, 8))})
        with pytest.raises(RunnerError, match="outside the engine's profile"):
            runner.infer({"x": sample((5, 16, 8))})


def test_engine_for_another_gpu_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    result = build_engine(path)
    manifest_file = manifest_path_for(result.plan_path)
    data = json.loads(manifest_file.read_text())
    data["compute_capability"] = "1.0"
    manifest_file.write_text(json.dumps(data))
    with pytest.raises(EngineIncompatibleError, match=r"compute capability 1\.0 .* Rebuild it on this host: dyt-build"):
        TensorRTRunner(result.plan_path).activate()


@pytest.mark.slow
def test_zoo_model_matches_onnxruntime(tmp_path: Path) -> None:
    import dyt_deploy
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner

    save_checkpoint(dyt_deploy.create_model("vit_tiny", norm="dyt", depth=2, img_size=32), tmp_path / "m.pt")
    export_onnx(tmp_path / "m.pt", repository=tmp_path / "repo", name="vit", form="function", fold=True)
    folder = tmp_path / "repo" / "vit"
    build_engine(folder)
    feed = {"pixel_values": sample((3, 3, 32, 32))}
    with OnnxRuntimeRunner(folder / "1" / "model.onnx") as ort_runner, \
            TensorRTRunner(folder / "1" / "model.plan") as trt_runner:
        expected = ort_runner.infer(feed)["logits"]
        got = trt_runner.infer(feed)["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
