"""TensorRTRunner without a GPU: lazy imports, missing backends, and the manifest check on activate."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dyt_deploy.runners.base import MissingBackendError, RunnerError
from dyt_deploy.runners.tensorrt import TensorRTRunner
from dyt_deploy.tensorrt import backend
from dyt_deploy.tensorrt import manifest as em
from dyt_deploy.tensorrt.manifest import (
    EngineIncompatibleError,
    EngineManifest,
    EngineManifestError,
    HostFacts,
    manifest_path_for,
    write_engine_manifest,
)

REPO = Path(__file__).resolve().parents[2]


def write_engine(folder: Path, **changes: object) -> Path:
    plan = folder / "model.plan"
    plan.write_bytes(b"PLAN")
    values = dict(tensorrt_version="10.13.0.35", gpu_name="NVIDIA A10G", compute_capability="8.6",
                  onnx_sha256="a" * 64, plan_sha256=hashlib.sha256(b"PLAN").hexdigest(), precision="fp32",
                  profiles={}, build={"command": ["dyt-build", "m.onnx", "-o", str(plan)]})
    values.update(changes)
    write_engine_manifest(manifest_path_for(plan), EngineManifest(**values))
    return plan


def test_import_is_lazy() -> None:
    code = ("import sys\nimport dyt_deploy.runners.tensorrt, dyt_deploy.tensorrt\n"
            "assert 'tensorrt' not in sys.modules and 'torch' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_infer_before_activate(tmp_path: Path) -> None:
    runner = TensorRTRunner(tmp_path / "model.plan")
    assert runner.name == "trt" and not runner.is_active
    with pytest.raises(RunnerError, match="call activate"):
        runner.infer({"x": np.zeros(1)})


def test_activate_without_tensorrt_names_the_extra(tmp_path: Path, no_tensorrt: None) -> None:
    with pytest.raises(MissingBackendError) as info:
        TensorRTRunner(write_engine(tmp_path)).activate()
    assert "dyt-deploy[tensorrt]" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path; this host has CUDA")
def test_activate_without_cuda(tmp_path: Path, fake_trt) -> None:
    with pytest.raises(MissingBackendError, match="needs a CUDA device"):
        TensorRTRunner(write_engine(tmp_path)).activate()


def test_runtime_without_device_is_missing_backend(fake_trt) -> None:
    def no_device(logger: object) -> None:
        raise TypeError("pybind11::init(): factory function returned nullptr")

    fake_trt.module.Runtime = no_device
    with pytest.raises(MissingBackendError, match="could not create its runtime: no usable CUDA device"):
        backend.create_runtime(fake_trt.module, object())


@pytest.fixture
def cuda_faked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pretend CUDA exists up to the manifest check; record if the runner went past it."""
    reached: list[str] = []
    monkeypatch.setattr(backend, "require_cuda_torch", lambda: torch)
    monkeypatch.setattr(backend, "create_runtime", lambda trt, logger: reached.append("runtime"))
    return reached


def test_activate_refuses_an_engine_from_another_tensorrt(tmp_path: Path, fake_trt, cuda_faked: list[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(em, "gather_host_facts", lambda device=None: HostFacts("11.1.0.106", "NVIDIA A10G", "8.6"))
    plan = write_engine(tmp_path)
    with pytest.raises(EngineIncompatibleError) as info:
        TensorRTRunner(plan).activate()
    message = str(info.value)
    assert "built with TensorRT 10.13.0.35, this host has 11.1.0.106" in message
    assert message.endswith(f"Rebuild it on this host: dyt-build m.onnx -o {plan}")
    assert cuda_faked == []  # refused before deserializing


def test_activate_refuses_an_engine_for_another_gpu(tmp_path: Path, fake_trt, cuda_faked: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(em, "gather_host_facts", lambda device=None: HostFacts("10.13.0.35", "Tesla T4", "7.5"))
    with pytest.raises(EngineIncompatibleError, match="built for compute capability 8.6"):
        TensorRTRunner(write_engine(tmp_path)).activate()
    assert cuda_faked == []


def test_activate_refuses_a_stale_engine(tmp_path: Path, fake_trt, cuda_faked: list[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(em, "gather_host_facts", lambda device=None: HostFacts("10.13.0.35", "NVIDIA A10G", "8.6"))
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"NEW EXPORT")
    with pytest.raises(EngineIncompatibleError, match="ONNX file changed since the build"):
        TensorRTRunner(write_engine(tmp_path, onnx_path="model.onnx")).activate()


def test_activate_without_manifest(tmp_path: Path, fake_trt, cuda_faked: list[str]) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN FROM SOMEWHERE")
    with pytest.raises(EngineManifestError, match="has no engine manifest"):
        TensorRTRunner(plan).activate()


# ---- the inference path, against a fake engine computing tanh(0.5 * x) on CPU memory ----


class FakeTorch:
    """torch, with CUDA devices and streams mapped onto the CPU (what the runner touches, nothing more)."""

    def __init__(self) -> None:
        self.cuda = types.SimpleNamespace(
            current_device=lambda: 0, device=lambda device: contextlib.nullcontext(),
            stream=lambda stream: contextlib.nullcontext(),
            Stream=lambda device=None: types.SimpleNamespace(cuda_stream=1234, synchronize=lambda: None))

    def device(self, kind: str, index: int) -> torch.device:
        return torch.device("cpu")

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)


class FakeEngine:
    """One input "x" [batch, 8] (batch 1..4) and one output "y" = tanh(0.5 * x), both fp32."""

    num_io_tensors = 2

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def get_tensor_name(self, index: int) -> str:
        return ["x", "y"][index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "x" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_profile_shape(self, name: str, index: int) -> list:
        return [(1, 8), (2, 8), (4, 8)]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self.calls)


class FakeContext:
    def __init__(self, calls: list) -> None:
        self.calls, self.shapes, self.addresses = calls, {}, {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.calls.append(("set_input_shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return 1 <= shape[0] <= 4 and tuple(shape[1:]) == (8,)

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def infer_shapes(self) -> list:
        return []

    def get_tensor_shape(self, name: str) -> tuple:
        return self.shapes["x"]

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append(("execute_async_v3", stream))
        count = int(np.prod(self.shapes["x"]))
        x = np.ctypeslib.as_array(ctypes.cast(self.addresses["x"], ctypes.POINTER(ctypes.c_float)), (count,))
        y = np.ctypeslib.as_array(ctypes.cast(self.addresses["y"], ctypes.POINTER(ctypes.c_float)), (count,))
        y[:] = np.tanh(0.5 * x)
        return True


@pytest.fixture
def fake_engine(tmp_path: Path, fake_trt, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list]:
    calls: list = []
    trt = fake_trt.module
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dtype: {"float32": np.float32}[dtype]
    trt.Runtime = lambda logger: types.SimpleNamespace(
        deserialize_cuda_engine=lambda data: FakeEngine(calls) if data == b"PLAN" else None)
    monkeypatch.setattr(backend, "require_cuda_torch", FakeTorch)
    monkeypatch.setattr(em, "gather_host_facts", lambda device=None: HostFacts("10.13.0.35", "NVIDIA A10G", "8.6"))
    return write_engine(tmp_path), calls


def test_infer_sets_shapes_binds_and_times_the_engine(fake_engine: tuple[Path, list]) -> None:
    plan, calls = fake_engine
    x = np.random.default_rng(0).normal(size=(3, 8))
    with TensorRTRunner(plan) as runner:
        assert (runner.input_names, runner.output_names) == (["x"], ["y"])
        outputs = runner.infer({"x": x})  # float64 in: cast to the engine's float32
    assert list(outputs) == ["y"] and outputs["y"].dtype == np.float32
    np.testing.assert_allclose(outputs["y"], np.tanh(0.5 * x), rtol=1e-6)
    assert calls == [("set_input_shape", "x", (3, 8)), ("execute_async_v3", 1234)]
    assert runner.last_inference_time is not None and runner.last_inference_time >= 0
    assert runner.engine is None and not runner.is_active


def test_infer_refuses_shapes_outside_the_profile(fake_engine: tuple[Path, list]) -> None:
    plan, _ = fake_engine
    with TensorRTRunner(plan) as runner:
        with pytest.raises(RunnerError, match=r"'x' of shape \[5, 8\] is outside the engine's profile \(min "
                                              r"\[1, 8\], opt \[2, 8\], max \[4, 8\]\); rebuild with a wider"):
            runner.infer({"x": np.zeros((5, 8), np.float32)})
        with pytest.raises(RunnerError, match="feed lacks input"):
            runner.infer({"pixel_values": np.zeros((1, 8), np.float32)})


def test_undeserializable_engine_says_rebuild(fake_engine: tuple[Path, list]) -> None:
    plan, _ = fake_engine
    other = b"CORRUPT"
    plan.write_bytes(other)
    data = json.loads(manifest_path_for(plan).read_text())
    data["plan_sha256"] = hashlib.sha256(other).hexdigest()
    manifest_path_for(plan).write_text(json.dumps(data))
    with pytest.raises(RunnerError, match="could not load .* rebuild it on this host: dyt-build m.onnx"):
        TensorRTRunner(plan).activate()


def test_plugin_engines_register_the_plugin_before_loading(tmp_path: Path, fake_engine: tuple[Path, list],
                                                           fake_trt) -> None:
    plan = write_engine(tmp_path, plugin=True)
    with TensorRTRunner(plan):
        assert "dyt_deploy::DynamicTanh" in fake_trt.plugin_registry
