"""Fixtures for the engine tests: small DyT ONNX files in every form, model folders, and a fake ``tensorrt``.

The fake TensorRT module stands in for the real one on hosts without it, so the build's own logic
(flags, config, profiles, parser errors, timing cache, atomic writes) runs here; it mimics the
API names dyt-deploy calls (TensorRT 10/11 Python API) and nothing more. The tests that need the
real TensorRT and a GPU live in test_engine_gpu.py.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from engine_testlib import make_dyt_onnx


@pytest.fixture
def dyt_onnx(tmp_path: Path) -> Callable[..., Path]:
    """``dyt_onnx(name, **make_dyt_onnx kwargs)`` -> path of a fresh DyT ONNX file in tmp_path."""

    def make(name: str = "model.onnx", **kwargs: Any) -> Path:
        path = tmp_path / name
        make_dyt_onnx(path, **kwargs)
        return path

    return make


# ---- a fake tensorrt ----


class FakeState:
    """What the fake TensorRT records and how it behaves (set before the build)."""

    def __init__(self) -> None:
        self.no_gpu = False
        self.parse_errors: list[dict[str, Any]] = []
        self.build_fails = False
        self.strongly_typed_flag = True
        self.tf32_flag = True
        self.network_flags: int | None = None
        self.cleared_flags: list[int] = []
        self.set_flags: list[int] = []
        self.pool_limits: dict[int, int] = {}
        self.opt_level: int | None = None
        self.profiles: list[dict[str, tuple]] = []
        self.parsed: tuple[bytes, str] | None = None
        self.timing_cache_in: bytes | None = None


def make_fake_tensorrt(state: FakeState, version: str = "10.13.0.35") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level: int) -> None:
            self.level = level

    flags = {"STRONGLY_TYPED": 5} if state.strongly_typed_flag else {}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    trt.BuilderFlag = types.SimpleNamespace(**({"TF32": 7} if state.tf32_flag else {}), REFIT=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.Logger = Logger
    trt.Builder = lambda logger: _builder(state)
    trt.OnnxParser = lambda network, logger: _parser(state, network)
    return trt


def _builder(state: FakeState) -> Any:
    if state.no_gpu:
        raise TypeError("pybind11::init(): factory function returned nullptr")

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+tuned"

    class Config:
        def __init__(self) -> None:
            self.cache: Cache | None = None

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            state.pool_limits[pool] = size

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "builder_optimization_level":
                state.opt_level = value
            object.__setattr__(self, name, value)

        def clear_flag(self, flag: int) -> None:
            state.cleared_flags.append(flag)

        def set_flag(self, flag: int) -> None:
            state.set_flags.append(flag)

        def add_optimization_profile(self, profile: Any) -> int:
            state.profiles.append(profile.shapes)
            return len(state.profiles) - 1

        def create_timing_cache(self, data: bytes) -> Cache:
            return Cache(bytes(data))

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            state.timing_cache_in = cache.data if state.timing_cache_in is None else state.timing_cache_in
            self.cache = cache
            return True

        def get_timing_cache(self) -> Cache:
            return self.cache

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class Builder:
        def create_network(self, flags: int = 0) -> Any:
            state.network_flags = flags
            return types.SimpleNamespace(inputs=[], num_inputs=0, get_input=None)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Any, config: Config) -> bytes | None:
            return None if state.build_fails else b"FAKE-PLAN:" + state.parsed[0][:16]

    return Builder()


def _parser(state: FakeState, network: Any) -> Any:
    class Error:
        def __init__(self, info: dict[str, Any]) -> None:
            self.info = info

        def node(self) -> int:
            return self.info.get("node", -1)

        def node_name(self) -> str:
            return self.info.get("node_name", "")

        def node_operator(self) -> str:
            return self.info.get("node_operator", "")

        def desc(self) -> str:
            return self.info["desc"]

    class Parser:
        num_errors = len(state.parse_errors)

        def parse(self, data: bytes, path: str | None = None) -> bool:
            state.parsed = (data, path)
            model = onnx.load_from_string(data)
            initializers = {t.name for t in model.graph.initializer}
            network.inputs = [types.SimpleNamespace(name=v.name, shape=tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim))
                for v in model.graph.input if v.name not in initializers]
            network.num_inputs = len(network.inputs)
            network.get_input = lambda i: network.inputs[i]
            return not state.parse_errors

        def get_error(self, index: int) -> Error:
            return Error(state.parse_errors[index])

    return Parser()


def make_fake_plugin_module(registry: dict[str, Any]) -> types.ModuleType:
    """A fake ``tensorrt.plugin`` that checks decorated functions the way the real one does (annotations are
    classes, TensorDescs first, impl = the register's tensors + outputs, stream) and records them."""
    trtp = types.ModuleType("tensorrt.plugin")

    class TensorDesc:
        pass

    class Tensor:
        pass

    def register(plugin_id: str) -> Callable:
        def wrap(func: Callable) -> Callable:
            params = inspect.signature(func).parameters.values()
            assert all(isinstance(p.annotation, type) and issubclass(p.annotation, TensorDesc) for p in params), \
                f"register annotations must be TensorDesc classes, got {[p.annotation for p in params]}"
            registry[plugin_id] = {"register": func, "tensors": [p.name for p in params]}
            return func

        return wrap

    def impl(plugin_id: str) -> Callable:
        def wrap(func: Callable) -> Callable:
            expected = [*registry[plugin_id]["tensors"], "outputs", "stream"]
            params = inspect.signature(func).parameters
            assert list(params) == expected, f"impl signature {list(params)} != {expected}"
            assert typing.get_origin(params["outputs"].annotation) is tuple
            assert params["stream"].annotation is int
            registry[plugin_id]["impl"] = func
            return func

        return wrap

    trtp.TensorDesc, trtp.Tensor, trtp.register, trtp.impl = TensorDesc, Tensor, register, impl
    return trtp


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeState:
    """Install a fake ``tensorrt`` (and ``tensorrt.plugin``) for one test; returns its state to configure and read."""
    import dyt_deploy.tensorrt.plugin as plugin

    state = FakeState()
    state.plugin_registry = {}
    trt = make_fake_tensorrt(state)
    trt.plugin = make_fake_plugin_module(state.plugin_registry)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trt.plugin)
    monkeypatch.delitem(sys.modules, "dyt_deploy.tensorrt._trt_plugin", raising=False)
    monkeypatch.setattr(plugin, "_registered", False)
    state.module = trt
    return state


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import tensorrt`` fail, as on a host without it (also where it is installed)."""
    import dyt_deploy.tensorrt.plugin as plugin

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)
    monkeypatch.delitem(sys.modules, "dyt_deploy.tensorrt._trt_plugin", raising=False)
    monkeypatch.setattr(plugin, "_registered", False)
