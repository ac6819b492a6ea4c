"""The DynamicTanh plugin's TensorRT-independent logic, and its registration through tensorrt.plugin."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from engine_testlib import dyt_function, make_dyt_onnx, reference

from dyt_deploy.runners.base import MissingBackendError
from dyt_deploy.tensorrt import plugin
from dyt_deploy.tensorrt.plugin import (
    PluginShapeError,
    bodiless_dyt_nodes,
    check_param_shapes,
    complete_inputs,
    input_names,
    onnx_dyt_reference,
    output_dtype,
    output_shape,
    overload_for,
    param_layout,
    register_plugin,
    run_dyt,
)


def test_constants_match_the_onnx_forms() -> None:
    from dyt_deploy.export import forms

    assert plugin.PLUGIN_NAMESPACE == forms.DOMAIN
    assert plugin.PLUGIN_NAME == forms.OP_TYPE
    assert plugin.PLUGIN_VERSION == forms.PLUGIN_VERSION
    assert plugin.OVERLOAD_INPUTS == forms.OVERLOADS
    assert plugin.PLUGIN_ID == "dyt_deploy::DynamicTanh"


@pytest.mark.parametrize("count, overload", [(4, ""), (3, "no_bias"), (2, "tanh_only")])
def test_overload_by_input_count(count: int, overload: str) -> None:
    assert overload_for(count) == overload
    assert input_names(count) == ("x", "alpha", "gamma", "beta")[:count]


@pytest.mark.parametrize("count", [0, 1, 5])
def test_bad_input_count_lists_the_overloads(count: int) -> None:
    with pytest.raises(PluginShapeError, match=rf"takes 4 \(x, alpha, gamma, beta\), 3 .*, 2 \(x, alpha\) inputs, "
                                               rf"not {count}"):
        overload_for(count)


def test_output_follows_x() -> None:
    assert output_shape([2, None, 8]) == (2, None, 8)
    assert output_dtype(np.float16) is np.float16


@pytest.mark.parametrize("name, shape, x_shape, layout", [
    ("alpha", [], [2, 4, 8], "scalar"),
    ("alpha", [1], [2, 4, 8], "scalar"),
    ("gamma", [1], [2, 4, 8], "scalar"),
    ("gamma", [8], [2, 4, 8], "last"),
    ("gamma", [1, 1, 8], [2, 4, 8], "last"),
    ("beta", [8], [None, None, 8], "last"),
    ("beta", [8], [2, 4, None], "last"),
    ("gamma", [16, 1, 1], [2, 16, 7, 7], "channels"),
    ("gamma", [1, 16, 1, 1], [None, 16, None, None], "channels"),
    ("gamma", [16, 1, 1], None, "channels"),
    ("gamma", [8], None, "last"),
])
def test_param_layouts(name: str, shape: list[int], x_shape: list[int | None] | None, layout: str) -> None:
    assert param_layout(name, shape, x_shape) == layout


@pytest.mark.parametrize("name, shape, x_shape, fragment", [
    ("alpha", [8], [2, 4, 8], "alpha must hold one value"),
    ("gamma", [4], [2, 4, 8], "gamma of shape [4] does not fit x of shape [2, 4, 8]"),
    ("gamma", [1, 1, 1, 8], [4, 8], "does not fit"),
    ("gamma", [16, 1, 1], [2, 16, 7], "does not fit"),
    ("gamma", [8, 1, 1], [2, 16, 7, 7], "does not fit"),
    ("beta", [2, 8], [2, 4, 8], "does not fit"),
    ("beta", [2, 8], None, "does not fit x of unknown shape"),
])
def test_param_misfits(name: str, shape: list[int], x_shape: list[int | None] | None, fragment: str) -> None:
    with pytest.raises(PluginShapeError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        param_layout(name, shape, x_shape)


def test_check_param_shapes_collects_problems() -> None:
    assert check_param_shapes([2, 4, 8], {"alpha": [], "gamma": [8], "beta": [8]}) == {
        "alpha": "scalar", "gamma": "last", "beta": "last"}
    assert check_param_shapes([2, 4, 8], {"alpha": [], "gamma": None, "beta": [1]}) == {"alpha": "scalar",
                                                                                         "beta": "scalar"}
    with pytest.raises(PluginShapeError) as info:
        check_param_shapes([2, 4, 8], {"alpha": [8], "gamma": [3], "beta": [8]})
    assert "alpha must hold one value" in str(info.value) and "gamma of shape [3]" in str(info.value)


def test_gamma_and_beta_must_broadcast_alike() -> None:
    with pytest.raises(PluginShapeError, match="broadcast differently"):
        check_param_shapes([2, 8, 3, 8], {"alpha": [], "gamma": [8], "beta": [8, 1, 1]})


# ---- the reference computation the plugin runs ----


@pytest.mark.parametrize("params", [
    {"alpha": 0.7, "gamma": "C", "beta": "C"},
    {"alpha": 0.7, "gamma": "C"},
    {"alpha": 0.7},
])
def test_reference_matches_the_formula(params: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (2, 5, 8)).astype(np.float32)
    alpha = np.array(params["alpha"], np.float32)
    gamma = rng.normal(1, 0.3, 8).astype(np.float32) if "gamma" in params else None
    beta = rng.normal(0, 0.3, 8).astype(np.float32) if "beta" in params else None
    expected = np.tanh(alpha * x.astype(np.float64))
    expected = expected * gamma if gamma is not None else expected
    expected = expected + beta if beta is not None else expected
    tensors = [None if a is None else torch.from_numpy(a) for a in (gamma, beta)]
    got = onnx_dyt_reference(torch.from_numpy(x), torch.from_numpy(alpha), *tensors)
    assert got.dtype == torch.float32 and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_reference_channels_first_and_into_an_output_buffer() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2, 4, 3, 3)).astype(np.float32))
    gamma = torch.from_numpy(rng.normal(size=(4, 1, 1)).astype(np.float32))
    beta = torch.from_numpy(rng.normal(size=(4, 1, 1)).astype(np.float32))
    out = torch.empty_like(x)
    result = onnx_dyt_reference(x, torch.tensor(0.5), gamma, beta, out=out)
    assert result is out
    expected = gamma.numpy() * np.tanh(0.5 * x.numpy()) + beta.numpy()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_reference_keeps_fp16_and_computes_in_fp32() -> None:
    x = torch.linspace(-4, 4, 64).reshape(2, 32).half()
    alpha, gamma, beta = torch.tensor(0.9).half(), torch.full((32,), 1.5).half(), torch.full((32,), 0.25).half()
    got = onnx_dyt_reference(x, alpha, gamma, beta)
    assert got.dtype == torch.float16
    expected = 1.5 * np.tanh(0.9 * x.float().numpy()) + 0.25
    np.testing.assert_allclose(got.float().numpy(), expected, atol=2e-3)


def test_neutral_inputs_change_nothing() -> None:
    x = torch.randn(3, 8)
    alpha = torch.tensor(0.5)
    plain = onnx_dyt_reference(x, alpha)
    padded = onnx_dyt_reference(x, alpha, torch.ones(1), torch.zeros(1))
    assert torch.equal(plain, padded)


@pytest.mark.parametrize(("x_shape", "gamma_shape", "dtype", "path"), [
    ((2, 5, 16), (16,), torch.float16, "triton"),        # per last dim: the kernel
    ((2, 5, 16), (1, 1, 16), torch.float32, "triton"),   # leading 1s are still per last dim
    ((3, 16), (1,), torch.bfloat16, "triton"),           # one value for every channel
    ((2, 4, 3, 3), (4, 1, 1), torch.float32, "reference"),  # channels-first: the reference
    ((3, 16), (16,), torch.float64, "reference"),        # no float64 kernel
])
def test_plugin_computation_uses_the_triton_kernel_where_it_fits(x_shape, gamma_shape, dtype, path) -> None:
    """The same dispatch the TensorRT impl runs: on a GPU host with CUDA tensors (as TensorRT hands
    them over), elsewhere with CPU tensors through Triton's interpreter."""
    pytest.importorskip("triton", reason="Triton not installed")
    from dyt_deploy.kernels import interpreting

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not interpreting():
        pytest.skip("no CUDA GPU and TRITON_INTERPRET unset: CPU tensors take the reference")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(x_shape, generator=g).to(device, dtype)
    alpha = torch.tensor([0.7], device=device)  # fp32 parameters next to fp16/bf16 x, as an exported engine has them
    gamma, beta = torch.randn(gamma_shape, generator=g).to(device), torch.randn(gamma_shape, generator=g).to(device)
    out = torch.full_like(x, float("nan"))
    assert run_dyt(x, alpha, gamma, beta, out) == path
    expected = onnx_dyt_reference(x, alpha, gamma, beta)
    # fp16/bf16 outputs: one rounding each side, plus the hardware tanh's error on a GPU
    tol = {torch.float16: 3e-3, torch.bfloat16: 1.6e-2}.get(dtype, 1e-6)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


def test_plugin_computation_on_cpu_tensors_without_the_interpreter_takes_the_reference(monkeypatch) -> None:
    """A GPU host's CPU tensors (TRITON_INTERPRET unset): the reference, whatever the dtype."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(3, 16).half()
    out = torch.empty_like(x)
    assert run_dyt(x, torch.tensor([0.7]), torch.ones(16), None, out) == "reference"
    torch.testing.assert_close(out, onnx_dyt_reference(x, torch.tensor([0.7]), torch.ones(16)))


def test_plugin_computation_checks_shapes_first() -> None:
    x = torch.randn(2, 8)
    with pytest.raises(PluginShapeError, match="gamma"):
        run_dyt(x, torch.tensor([0.5]), torch.ones(5), None, torch.empty_like(x))


# ---- the ONNX side ----


def test_bodiless_nodes_only_in_the_plugin_form(tmp_path: Path) -> None:
    for form, expected in (("plugin", 2), ("function", 0), ("pattern", 0)):
        make_dyt_onnx(tmp_path / f"{form}.onnx", form, ["", "tanh_only"])
        assert len(bodiless_dyt_nodes(onnx.load(str(tmp_path / f"{form}.onnx")))) == expected


def test_complete_inputs_gives_every_node_four_inputs_without_changing_values(tmp_path: Path) -> None:
    path = tmp_path / "plugin.onnx"
    sites = make_dyt_onnx(path, "plugin", ["tanh_only", "no_bias", ""])
    model = onnx.load(str(path))
    assert complete_inputs(model) == 2
    assert complete_inputs(model) == 0  # idempotent
    assert [len(n.input) for n in model.graph.node] == [4, 4, 4]
    assert sum(t.name.startswith("dyt_deploy.plugin.") for t in model.graph.initializer) == 2  # shared, added once
    # run the completed graph with the plugin's semantics (its function body) to show values are unchanged
    model.functions.append(dyt_function("", 20))
    for node in model.graph.node:
        node.overload = ""
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, reference(x, sites), rtol=1e-5, atol=1e-6)


def test_complete_inputs_uses_alpha_dtype(tmp_path: Path) -> None:
    path = tmp_path / "fp16.onnx"
    make_dyt_onnx(path, "plugin", ["tanh_only"], dtype=np.float16)
    model = onnx.load(str(path))
    complete_inputs(model)
    added = [t for t in model.graph.initializer if t.name.startswith("dyt_deploy.plugin.")]
    assert {t.data_type for t in added} == {onnx.TensorProto.FLOAT16}
    values = {t.name.split(".")[-1]: onnx.numpy_helper.to_array(t).tolist() for t in added}
    assert values == {"gamma_float16": [1.0], "beta_float16": [0.0]}


# ---- registration ----


def test_register_without_tensorrt_names_the_extra(no_tensorrt: None) -> None:
    with pytest.raises(MissingBackendError) as info:
        register_plugin()
    message = str(info.value)
    assert "tensorrt.plugin" in message and "dyt-deploy[tensorrt]" in message and "\n" not in message


def test_register_defines_the_plugin_once(fake_trt) -> None:
    register_plugin()
    register_plugin()
    entry = fake_trt.plugin_registry["dyt_deploy::DynamicTanh"]
    assert entry["tensors"] == ["x", "alpha", "gamma", "beta"]
    assert "impl" in entry
    assert "dyt_deploy.tensorrt._trt_plugin" in sys.modules


def test_plugin_descriptor_returns_x_like(fake_trt) -> None:
    register_plugin()
    register = fake_trt.plugin_registry["dyt_deploy::DynamicTanh"]["register"]

    class Desc:
        def like(self) -> str:
            return "like x"

    assert register(Desc(), object(), object(), object()) == "like x"
