"""Fold DyT's gamma and beta into the linear layers that consume it (FlashNorm-style).

``W @ (gamma * t + beta) + c = (W * gamma) @ t + (W @ beta + c)`` with ``t = tanh(alpha * x)``:
when every consumer of a DyT is a MatMul/Gemm with constant weights, the gamma Mul and beta
Add disappear and only ``tanh(alpha * x)`` stays. Works on the ``pattern`` form; new weights are
new initializers (the exporter shares equal initializers between layers, so none is edited).
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
    gamma: np.ndarray
    beta: np.ndarray | None

    @property
    def output(self) -> ir.Value:
        return (self.beta_add or self.gamma_mul).outputs[0]


def fold_dyt_affine(model: ir.Model) -> FoldReport:
    """Fold every foldable DyT of ``model`` (pattern form) in place; report folded/skipped counts."""
    report = FoldReport()
    for site in _find_sites(model.graph):
        consumers = list(site.output.uses())
        if not consumers or site.output.is_graph_output() or not all(_foldable(u.node, u.idx) for u in consumers):
            report.skipped += 1
            continue
        for use in consumers:
            _fold_into(model.graph, use.node, site)
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
    if gamma is None or gamma.ndim != 1:
        return None
    beta_add = _only_use(gamma_mul.outputs[0], "Add")
    beta = None if beta_add is None else _other_const(beta_add, gamma_mul.outputs[0])
    if beta is None or beta.shape != gamma.shape:
        beta_add, beta = None, None
    return _Site(tanh, gamma_mul, beta_add, gamma, beta)


def _foldable(node: ir.Node, input_index: int) -> bool:
    if input_index != 0:
        return False
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not _is_const(weight) or len(weight.const_value.shape) != 2:
        return False
    if node.op_type == "MatMul":
        return True
    attrs = node.attributes
    return node.op_type == "Gemm" and attrs.get_int("transA", 0) == 0


def _fold_into(graph: ir.Graph, node: ir.Node, site: _Site) -> None:
    """Rewire ``node`` to read tanh(alpha*x) with gamma folded into its weight and beta into a bias."""
    weight_value = node.inputs[1]
    weight = weight_value.const_value.numpy().astype(np.float64)
    transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0) == 1
    w_in_out = weight.T if transposed else weight  # (in, out)
    folded = w_in_out * site.gamma.astype(np.float64)[:, None]
    dtype = weight_value.const_value.numpy().dtype
    new_weight = _initializer(graph, f"{weight_value.name}.dyt_folded", (folded.T if transposed else folded), dtype)
    node.replace_input_with(1, new_weight)
    node.replace_input_with(0, site.tanh.outputs[0])
    if site.beta is not None:
        shift = site.beta.astype(np.float64) @ w_in_out  # (out,)
        _add_bias(graph, node, shift, dtype)


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
