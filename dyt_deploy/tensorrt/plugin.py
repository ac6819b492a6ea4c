"""The DynamicTanh TensorRT plugin, for the ``plugin`` ONNX form of DyT.

The plugin form holds ``dyt_deploy::DynamicTanh`` nodes without function bodies. TensorRT's ONNX
parser finds no builtin and no local function of that name, so it looks the node up in its plugin
registry by op_type, ``plugin_version`` and ``plugin_namespace``: :func:`register_plugin` puts
``dyt_deploy::DynamicTanh`` (version "1") there through TensorRT's Python plugin API
(``tensorrt.plugin``, JIT: the engine needs this process, or another that called
:func:`register_plugin`, to run).

A TensorRT Python plugin has a fixed input list, while the ONNX op has three overloads (see
``dyt_deploy.export.forms``): ``""`` (x, alpha, gamma, beta), ``"no_bias"`` (x, alpha, gamma) and
``"tanh_only"`` (x, alpha). The plugin takes all four; the build gives the shorter nodes a scalar
gamma of 1 and beta of 0 (:func:`complete_inputs`), which leaves every value unchanged.

Everything that does not need TensorRT is a plain function here, tested on CPU: the overload of a
node, the output rule, the shape checks and the reference computation the GPU impl runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DytDeployError

if TYPE_CHECKING:
    import onnx
    import torch

# Must equal dyt_deploy.export.forms (DOMAIN, OP_TYPE, PLUGIN_VERSION, OVERLOADS); a test checks it.
PLUGIN_NAMESPACE = "dyt_deploy"
PLUGIN_NAME = "DynamicTanh"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
OVERLOAD_INPUTS = {"": ("x", "alpha", "gamma", "beta"), "no_bias": ("x", "alpha", "gamma"), "tanh_only": ("x", "alpha")}
PLUGIN_INPUTS = OVERLOAD_INPUTS[""]
# What a missing input stands for: gamma * t + beta == t exactly when gamma = 1 and beta = 0.
NEUTRAL_VALUES = {"gamma": 1.0, "beta": 0.0}

Dim = int | None  # None: not known (a dynamic dim at build time)


class PluginShapeError(DytDeployError):
    """A DynamicTanh node's inputs do not fit the op: wrong count, or alpha/gamma/beta shapes that do not fit x."""


def overload_for(num_inputs: int) -> str:
    """The overload of a node with ``num_inputs`` inputs: 4 -> "", 3 -> "no_bias", 2 -> "tanh_only"."""
    for overload, names in OVERLOAD_INPUTS.items():
        if len(names) == num_inputs:
            return overload
    counts = ", ".join(f"{len(n)} ({', '.join(n)})" for n in OVERLOAD_INPUTS.values())
    raise PluginShapeError(f"{PLUGIN_NAME} takes {counts} inputs, not {num_inputs}")


def input_names(num_inputs: int) -> tuple[str, ...]:
    """The names of a node's inputs, by count: ("x", "alpha"[, "gamma"[, "beta"]])."""
    return OVERLOAD_INPUTS[overload_for(num_inputs)]


def output_shape(x_shape: Sequence[Dim]) -> tuple[Dim, ...]:
    """DyT is elementwise: the output has x's shape."""
    return tuple(x_shape)


def output_dtype(x_dtype: Any) -> Any:
    """The output has x's dtype (an fp16 x gives an fp16 output; alpha/gamma/beta may be wider)."""
    return x_dtype


def param_layout(name: str, shape: Sequence[int], x_shape: Sequence[Dim] | None) -> str:
    """How a parameter broadcasts against x: "scalar", "last" (over the last dim) or "channels" (dim 1 of NCHW).

    alpha must be a scalar (one element). gamma and beta may be a scalar, shaped like the last dim
    of x (``(C,)``, with leading 1s allowed), or, for rank-4 channels-first x, shaped ``(C, 1, 1)``
    or ``(1, C, 1, 1)``. Unknown dims of x (None) match any size; ``x_shape=None`` (rank unknown
    too) checks only that the parameter has one of these forms.
    """
    shape = tuple(shape)
    if all(d == 1 for d in shape):
        return "scalar"
    if name == "alpha":
        raise PluginShapeError(f"alpha must hold one value (a scalar per DyT layer), got shape {list(shape)}")
    if _fits_last(shape, x_shape):
        return "last"
    if _fits_channels(shape, x_shape):
        return "channels"
    x_text = "of unknown shape" if x_shape is None else f"of shape {_describe(x_shape)}"
    raise PluginShapeError(
        f"{name} of shape {list(shape)} does not fit x {x_text}: expected one value, "
        f"[C] with C = x's last dim, or [C, 1, 1] with C = dim 1 of a rank-4 x"
    )


def _fits_last(shape: tuple[int, ...], x_shape: Sequence[Dim] | None) -> bool:
    if not all(d == 1 for d in shape[:-1]):
        return False
    if x_shape is None:
        return True
    return 0 < len(shape) <= len(x_shape) and _same(shape[-1], x_shape[-1])


def _fits_channels(shape: tuple[int, ...], x_shape: Sequence[Dim] | None) -> bool:
    if len(shape) not in (3, 4) or shape[-2:] != (1, 1) or not all(d == 1 for d in shape[:-3]):
        return False
    return x_shape is None or (len(x_shape) == 4 and _same(shape[-3], x_shape[1]))


def _same(size: int, dim: Dim) -> bool:
    return dim is None or dim == size


def _describe(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_param_shapes(x_shape: Sequence[Dim] | None, params: dict[str, Sequence[int] | None]) -> dict[str, str]:
    """The layout of each given parameter (alpha, gamma, beta; None = absent or unknown), every misfit in one error.

    ``x_shape`` None means x's shape is unknown. gamma and beta, when both per-channel, must
    broadcast the same way.
    """
    layouts: dict[str, str] = {}
    problems: list[str] = []
    for name, shape in params.items():
        if shape is None:
            continue
        try:
            layouts[name] = param_layout(name, shape, x_shape)
        except PluginShapeError as err:
            problems.append(str(err))
    pair = {layouts.get("gamma"), layouts.get("beta")} - {None, "scalar"}
    if len(pair) > 1:
        problems.append(f"gamma and beta broadcast differently ({layouts['gamma']} vs {layouts['beta']})")
    if problems:
        raise PluginShapeError(f"{PLUGIN_NAME}: " + "; ".join(problems))
    return layouts


def onnx_dyt_reference(x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor | None = None,
                  beta: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``gamma * tanh(alpha * x) + beta`` with ONNX (numpy) broadcasting, on any device.

    Computed in float32 (or float64 for float64 x) and cast to x's dtype; written into ``out``
    when given (the plugin's output buffer), else returned as a new tensor. A missing gamma
    means 1, a missing beta 0.
    """
    import torch

    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.tanh(alpha.to(compute) * x.to(compute))
    if gamma is not None:
        y = y * gamma.to(compute)
    if beta is not None:
        y = y + beta.to(compute)
    if out is None:
        return y.to(x.dtype)
    out.copy_(y.reshape(out.shape))
    return out


def run_dyt(x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
            out: torch.Tensor) -> str:
    """The plugin's computation into ``out``: the Triton kernel of :mod:`dyt_deploy.kernels` when it fits,
    else :func:`onnx_dyt_reference`. Returns which ran, ``"triton"`` or ``"reference"``.

    The kernel fits when gamma and beta are per last dim or one value (not channels-first), the
    storage types are fp32/fp16/bf16 and Triton can run on x's device.
    """
    from ..kernels import KERNEL_DTYPES, will_use_kernel

    layouts = check_param_shapes(tuple(x.shape), {"alpha": alpha.shape, "gamma": None if gamma is None else gamma.shape,
                                                  "beta": None if beta is None else beta.shape})
    if "channels" not in layouts.values() and x.dim() >= 1 and out.dtype in KERNEL_DTYPES and will_use_kernel(x):
        from ..kernels.triton_dyt import dyt_forward

        dyt_forward(x, alpha, gamma, beta, out=out)
        return "triton"
    onnx_dyt_reference(x, alpha, gamma, beta, out=out)
    return "reference"


# ---- the ONNX side: which nodes need the plugin, and giving them all four inputs ----


def bodiless_dyt_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Main-graph DynamicTanh nodes that TensorRT's parser will import as a plugin (no local function of that name).

    The parser matches by op_type alone (domain ignored), so any function named DynamicTanh counts as a body.
    """
    if any(f.name == PLUGIN_NAME for f in model.functions):
        return []
    return [node for node in model.graph.node if node.op_type == PLUGIN_NAME]


def complete_inputs(model: onnx.ModelProto) -> int:
    """Give every bodiless DynamicTanh node all four plugin inputs (scalar gamma 1, beta 0); returns how many changed.

    The scalars take alpha's element type when alpha is an initializer, float32 otherwise (the impl
    computes in float32 either way). The model is changed in place.
    """
    import onnx

    initializers = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in bodiless_dyt_nodes(model):
        missing = PLUGIN_INPUTS[len(input_names(len(node.input))):]
        if not missing:
            continue
        alpha = initializers.get(node.input[1])
        elem_type = alpha.data_type if alpha is not None else onnx.TensorProto.FLOAT
        node.input.extend(_neutral_initializer(model, name, elem_type) for name in missing)
        node.overload = ""
        changed += 1
    return changed


def _neutral_initializer(model: onnx.ModelProto, param: str, elem_type: int) -> str:
    """The name of a one-element initializer holding gamma's 1 or beta's 0 in ``elem_type``, added once per model."""
    import onnx
    from onnx import helper

    name = f"dyt_deploy.plugin.{param}_{onnx.TensorProto.DataType.Name(elem_type).lower()}"
    if not any(t.name == name for t in model.graph.initializer):
        model.graph.initializer.append(helper.make_tensor(name, elem_type, [1], [NEUTRAL_VALUES[param]]))
    return name


# ---- TensorRT registration ----

_registered = False


def register_plugin() -> None:
    """Register ``dyt_deploy::DynamicTanh`` in TensorRT's plugin registry (once per process).

    Raises MissingBackendError naming the ``tensorrt`` extra when TensorRT (with ``tensorrt.plugin``,
    TensorRT 10.6+) is not installed.
    """
    global _registered
    if _registered:
        return
    from ..errors import MissingBackendError

    try:
        importlib.import_module("tensorrt.plugin")
    except ImportError as err:
        raise MissingBackendError(
            f"the DynamicTanh plugin needs TensorRT 10.6+ with its Python plugin API, tensorrt.plugin ({err}): "
            "pip install 'dyt-deploy[tensorrt]' on a host with an NVIDIA GPU"
        ) from None
    importlib.import_module(f"{__package__}._trt_plugin")
    _registered = True
