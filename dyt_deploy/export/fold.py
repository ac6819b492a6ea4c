"""Fold DyT's gamma and beta into the linear layers that consume it (FlashNorm-style).

``W @ (gamma * t + beta) + c = (W * gamma) @ t + (W @ beta + c)`` with ``t = tanh(alpha * x)``:
when every consumer of a DyT is a linear layer with constant weights, the gamma Mul and beta
Add disappear and only ``tanh(alpha * x)`` stays. Works on the ``pattern`` form; new weights are
new initializers (the exporter shares equal initializers between layers, so none is edited).

Linear layers that fold:

- channels-last DyT (gamma of shape ``(C,)``): a MatMul or Gemm reading it directly;
- channels-first DyT (gamma ``(C, 1, 1)`` over dim 1 of NCHW, as ConvNeXt's ``LayerNorm2d`` sites):
  a Conv with one group and no padding (a zero-padded border would not see beta), or a MatMul/Gemm
  behind a flatten of dims 1.. (Flatten(axis=1), or a Reshape to rank 2 that keeps the batch dim),
  where feature ``f`` of the flattened row comes from channel ``f // (H*W)``.

Any other reader (a residual Add, a padded or depthwise conv, a slice) leaves the site as it is,
counted in ``FoldReport.skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from .forms import _is_const, _is_scalar_const


@dataclass
class FoldReport:
    folded: int = 0
    skipped: int = 0
    linear_layers: int = 0


@dataclass
class _Site:
    tanh: ir.Node
    gamma_mul: ir.Node
    beta_add: ir.Node | None
    gamma: np.ndarray  # (C,), whatever the layout
    beta: np.ndarray | None
    channels_first: bool = False

    @property
    def output(self) -> ir.Value:
        return (self.beta_add or self.gamma_mul).outputs[0]


def fold_dyt_affine(model: ir.Model) -> FoldReport:
    """Fold every foldable DyT of ``model`` (pattern form) in place; report folded/skipped counts."""
    report = FoldReport()
    for site in _find_sites(model.graph):
        consumers = list(site.output.uses())
        targets = [_target(site, use.node, use.idx) for use in consumers]
        if not consumers or site.output.is_graph_output() or None in targets:
            report.skipped += 1
            continue
        for target in targets:
            _fold(model.graph, site, target)
            report.linear_layers += 1
        dead = [n for n in (site.beta_add, site.gamma_mul) if n is not None]
        model.graph.remove(dead, safe=True)
        report.folded += 1
    RemoveUnusedNodesPass()(model)  # drops the replaced weights and gamma/beta initializers
    return report


def _find_sites(graph: ir.Graph) -> list[_Site]:
    sites = []
    for node in list(graph):
        if node.op_type != "Tanh":
            continue
        producer = node.inputs[0].producer()
        if producer is None or producer.op_type != "Mul" or not any(_is_scalar_const(v) for v in producer.inputs):
            continue
        site = _site_after(node)
        if site is not None:
            sites.append(site)
    return sites


def _only_use(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) == 1 and uses[0].node.op_type == op_type and not value.is_graph_output():
        return uses[0].node
    return None


def _other_const(node: ir.Node, value: ir.Value) -> np.ndarray | None:
    others = [v for v in node.inputs if v is not value]
    if len(others) == 1 and _is_const(others[0]):
        return others[0].const_value.numpy()
    return None


def _site_after(tanh: ir.Node) -> _Site | None:
    gamma_mul = _only_use(tanh.outputs[0], "Mul")
    gamma = None if gamma_mul is None else _other_const(gamma_mul, tanh.outputs[0])
    # (C, 1, ..., 1) against x of one more dim: per channel of dim 1 (NCHW); other shapes are not DyT's
    channels_first = (gamma is not None and gamma.ndim > 1 and all(d == 1 for d in gamma.shape[1:])
                      and _rank(tanh) == gamma.ndim + 1)
    if gamma is None or not (gamma.ndim == 1 or channels_first):
        return None
    beta_add = _only_use(gamma_mul.outputs[0], "Add")
    beta = None if beta_add is None else _other_const(beta_add, gamma_mul.outputs[0])
    if beta is None or beta.shape != gamma.shape:
        beta_add, beta = None, None
    return _Site(tanh, gamma_mul, beta_add, gamma.reshape(-1), None if beta is None else beta.reshape(-1),
                 channels_first)


def _rank(tanh: ir.Node) -> int | None:
    """The rank of the DyT's input x, from whichever of x, alpha*x or tanh(alpha*x) has a known shape."""
    scale = tanh.inputs[0].producer()
    candidates = [tanh.outputs[0], tanh.inputs[0], *(scale.inputs if scale is not None else [])]
    ranks = [len(v.shape) for v in candidates if v is not None and v.shape is not None and not _is_scalar_const(v)]
    return ranks[0] if ranks else None


@dataclass
class _Target:
    """Where a site folds: ``layer`` (MatMul, Gemm or Conv), read directly or through ``flatten``."""

    layer: ir.Node
    flatten: ir.Node | None = None


def _target(site: _Site, node: ir.Node, input_index: int) -> _Target | None:
    """The layer one reader of ``site`` lets it fold into, or None when that reader does not allow it."""
    if input_index != 0:
        return None
    if not site.channels_first:
        return _Target(node) if _linear_foldable(node) else None
    if node.op_type == "Conv":
        return _Target(node) if _conv_foldable(node, len(site.gamma)) else None
    if _flattens_from_axis_1(node):
        layer = _only_use(node.outputs[0], "MatMul") or _only_use(node.outputs[0], "Gemm")
        reads_as_input = layer is not None and next(iter(node.outputs[0].uses())).idx == 0
        if reads_as_input and _linear_foldable(layer) and _in_features(layer) % len(site.gamma) == 0:
            return _Target(layer, flatten=node)
    return None


def _linear_foldable(node: ir.Node) -> bool:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not _is_const(weight) or len(weight.const_value.shape) != 2:
        return False
    if node.op_type == "MatMul":
        return True
    attrs = node.attributes
    return node.op_type == "Gemm" and attrs.get_int("transA", 0) == 0


def _conv_foldable(node: ir.Node, channels: int) -> bool:
    """A Conv with constant weights over ``channels`` inputs, one group, no padding."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not _is_const(weight) or weight.const_value.shape[1] != channels:
        return False
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    attrs = node.attributes
    pads = attrs.get_ints("pads", None) or ()
    auto_pad = attrs.get_string("auto_pad", "NOTSET")
    return (attrs.get_int("group", 1) == 1 and not any(pads) and auto_pad in ("NOTSET", "VALID")
            and (bias is None or _is_const(bias)))


def _flattens_from_axis_1(node: ir.Node) -> bool:
    """Flatten(axis=1), or a Reshape to rank 2 whose first dim is the input's first dim (shapes inferred)."""
    if node.op_type == "Flatten":
        return node.attributes.get_int("axis", 1) == 1
    if node.op_type != "Reshape":
        return False
    source, result = node.inputs[0].shape, node.outputs[0].shape
    return source is not None and result is not None and len(result) == 2 and len(source) >= 2 \
        and result[0] == source[0]


def _in_features(node: ir.Node) -> int:
    weight = node.inputs[1].const_value.shape
    transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0) == 1
    return int(weight[1] if transposed else weight[0])


def _fold(graph: ir.Graph, site: _Site, target: _Target) -> None:
    if target.layer.op_type == "Conv":
        _fold_into_conv(graph, target.layer, site)
        return
    repeat = _in_features(target.layer) // len(site.gamma)  # H*W per channel behind a flatten, else 1
    gamma = np.repeat(site.gamma, repeat)
    beta = None if site.beta is None else np.repeat(site.beta, repeat)
    reader = target.flatten or target.layer
    reader.replace_input_with(0, site.tanh.outputs[0])
    _fold_into_linear(graph, target.layer, gamma, beta)


def _fold_into_linear(graph: ir.Graph, node: ir.Node, gamma: np.ndarray, beta: np.ndarray | None) -> None:
    """Scale ``node``'s weight rows by ``gamma`` and add ``beta``'s image to its bias."""
    weight_value = node.inputs[1]
    weight = weight_value.const_value.numpy().astype(np.float64)
    transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0) == 1
    w_in_out = weight.T if transposed else weight  # (in, out)
    folded = w_in_out * gamma.astype(np.float64)[:, None]
    dtype = weight_value.const_value.numpy().dtype
    new_weight = _initializer(graph, f"{weight_value.name}.dyt_folded", (folded.T if transposed else folded), dtype)
    node.replace_input_with(1, new_weight)
    if beta is not None:
        shift = beta.astype(np.float64) @ w_in_out  # (out,)
        _add_bias(graph, node, shift, dtype)


def _fold_into_conv(graph: ir.Graph, node: ir.Node, site: _Site) -> None:
    """``conv(W, g*t + b) = conv(W*g, t) + sum(W*b)``: exact without padding (every tap reads a real pixel)."""
    weight_value = node.inputs[1]
    weight = weight_value.const_value.numpy().astype(np.float64)  # (out, in, k...)
    per_input = (1, -1) + (1,) * (weight.ndim - 2)
    dtype = weight_value.const_value.numpy().dtype
    folded = weight * site.gamma.astype(np.float64).reshape(per_input)
    node.replace_input_with(1, _initializer(graph, f"{weight_value.name}.dyt_folded", folded, dtype))
    node.replace_input_with(0, site.tanh.outputs[0])
    if site.beta is None:
        return
    shift = (weight * site.beta.astype(np.float64).reshape(per_input)).sum(axis=tuple(range(1, weight.ndim)))
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    if bias_value is None:
        node.resize_inputs(3)
        node.replace_input_with(2, _initializer(graph, f"{node.name or weight_value.name}.dyt_beta", shift, dtype))
        return
    bias = bias_value.const_value.numpy().astype(np.float64) + shift
    node.replace_input_with(2, _initializer(graph, f"{bias_value.name}.dyt_folded", bias, dtype))


def _add_bias(graph: ir.Graph, node: ir.Node, shift: np.ndarray, dtype: np.dtype) -> None:
    """Add ``shift`` to the output of ``node``: into its constant bias if it has one, else a new Add."""
    if node.op_type == "Gemm":
        alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
        c_value = node.inputs[2] if len(node.inputs) > 2 else None
        if c_value is None:
            node.resize_inputs(3)
            node.replace_input_with(2, _initializer(graph, f"{node.name}.dyt_beta", alpha * shift, dtype))
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        elif _is_const(c_value) and beta != 0.0:
            c = c_value.const_value.numpy().astype(np.float64) + alpha * shift / beta
            node.replace_input_with(2, _initializer(graph, f"{c_value.name}.dyt_folded", c, dtype))
        else:
            _insert_add(graph, node, alpha * shift, dtype)
        return
    out = node.outputs[0]
    bias_add = _only_use(out, "Add")
    bias = None if bias_add is None else _other_const(bias_add, out)
    if bias is None or bias.shape != shift.shape:
        _insert_add(graph, node, shift, dtype)
        return
    index = 1 if bias_add.inputs[0] is out else 0
    name = f"{bias_add.inputs[index].name}.dyt_folded"
    bias_add.replace_input_with(index, _initializer(graph, name, bias.astype(np.float64) + shift, dtype))


def _insert_add(graph: ir.Graph, node: ir.Node, shift: np.ndarray, dtype: np.dtype) -> None:
    """Put ``Add(shift)`` after ``node`` and move every reader of its output (graph outputs too) onto it."""
    out = node.outputs[0]
    readers = [(use.node, use.idx) for use in out.uses()]
    beta = _initializer(graph, f"{out.name}.dyt_beta", shift, dtype)
    # node names are optional in ONNX: an unnamed node's Add gets a unique name from the graph, not "_beta"
    add = ir.node("Add", [out, beta], name=f"{node.name}_beta" if node.name else None)
    graph.insert_after(node, add)
    new = add.outputs[0]
    new.shape, new.type = out.shape, out.type
    for reader, index in readers:
        reader.replace_input_with(index, new)
    if out.is_graph_output():
        graph.outputs[graph.outputs.index(out)] = new
        new.name, out.name = out.name, f"{out.name}_before_beta"


def _initializer(graph: ir.Graph, name: str, array: np.ndarray, dtype: np.dtype) -> ir.Value:
    base, k = name, 1
    while name in graph.initializers:
        name, k = f"{base}.{k}", k + 1
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array.astype(dtype)), name=name))
    value.shape, value.type = value.const_value.shape, ir.TensorType(value.const_value.dtype)
    graph.register_initializer(value)
    return value
