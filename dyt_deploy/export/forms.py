"""The ONNX forms of DyT and the rewrites between them.

- ``pattern``: Mul(alpha) -> Tanh -> Mul(gamma) -> Add(beta), as torch exports DyT.
- ``function``: one ``dyt_deploy::DynamicTanh`` node per DyT, backed by an ONNX local function
  whose body is that chain, so any runtime that inlines functions (onnxruntime, TensorRT's
  parser) runs the file as is.
- ``plugin``: the same nodes without function bodies, carrying ``plugin_namespace`` and
  ``plugin_version`` for TensorRT's plugin lookup; only TensorRT with dyt-deploy's plugin runs it.

One op name, three overloads by what the DyT keeps:
``""`` (x, alpha, gamma, beta), ``"no_bias"`` (x, alpha, gamma: the paper's LLaMA DyT) and
``"tanh_only"`` (x, alpha: a DyT whose gamma/beta were folded into the next linear layer).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx import helper
from onnx_ir.passes.common import InlinePass, RemoveUnusedFunctionsPass, RemoveUnusedOpsetsPass
from onnxscript.rewriter import pattern

from ..errors import DytDeployError, unknown_name

DOMAIN = "dyt_deploy"
OP_TYPE = "DynamicTanh"
PLUGIN_VERSION = "1"
FORMS = ("pattern", "function", "plugin")
# overload -> input names of the function
OVERLOADS = {"": ("x", "alpha", "gamma", "beta"), "no_bias": ("x", "alpha", "gamma"), "tanh_only": ("x", "alpha")}
_LINEAR_OPS = {"MatMul", "Gemm"}


class FormError(DytDeployError):
    """An ONNX file is not in a form the requested rewrite can start from."""


def _is_scalar_const(value: ir.Value | None) -> bool:
    const = None if value is None else value.const_value
    return const is not None and const.size == 1


def _is_const(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def _dyt_full(op, x, alpha, gamma, beta):
    return op.Add(op.Mul(op.Tanh(op.Mul(alpha, x)), gamma), beta)


def _dyt_no_bias(op, x, alpha, gamma):
    return op.Mul(op.Tanh(op.Mul(alpha, x)), gamma)


def _dyt_tanh_only(op, x, alpha):
    return op.Tanh(op.Mul(alpha, x))


def _affine_ok(context, x, alpha, gamma, beta=None, **_) -> bool:
    consts_ok = _is_const(gamma) and (beta is None or _is_const(beta))
    return _is_scalar_const(alpha) and not _is_const(x) and consts_ok


def _tanh_only_ok(context, x, alpha, **_) -> bool:
    """A bare tanh(alpha*x) is DyT only once folded: every consumer of the Tanh is linear.

    (This keeps e.g. the tanh inside a tanh-approximated GELU, consumed by an Add, untouched.)
    """
    if not (_is_scalar_const(alpha) and not _is_const(x)):
        return False
    scale_nodes = [use.node for use in x.uses() if use.node.op_type == "Mul" and alpha in use.node.inputs]
    tanh_nodes = [use.node for n in scale_nodes for use in n.outputs[0].uses() if use.node.op_type == "Tanh"]
    return any(_only_linear_readers(t.outputs[0]) for t in tanh_nodes)


def _only_linear_readers(value: ir.Value) -> bool:
    """Every reader is what a folded DyT leaves: a MatMul/Gemm/Conv, or a flatten into MatMul/Gemm."""
    uses = list(value.uses())
    return bool(uses) and all(use.idx == 0 and _linear_reader(use.node) for use in uses)


def _linear_reader(node: ir.Node) -> bool:
    if node.op_type in _LINEAR_OPS or node.op_type == "Conv":
        return True
    if node.op_type not in ("Flatten", "Reshape") or node.outputs[0].is_graph_output():
        return False
    uses = list(node.outputs[0].uses())
    return bool(uses) and all(use.idx == 0 and use.node.op_type in _LINEAR_OPS for use in uses)


def _to_node(op, x, alpha, gamma=None, beta=None):
    inputs = [v for v in (x, alpha, gamma, beta) if v is not None]
    return op.DynamicTanh(*inputs, _domain=DOMAIN)


def _rule_sets() -> list[pattern.RewriteRuleSet]:
    """Longest chain first, so a full DyT is never matched as a shorter one plus a leftover Add."""
    rules = [
        pattern.RewriteRule(_dyt_full, _to_node, _affine_ok, name="FuseDyT"),
        pattern.RewriteRule(_dyt_no_bias, _to_node, _affine_ok, name="FuseDyTNoBias"),
        pattern.RewriteRule(_dyt_tanh_only, _to_node, _tanh_only_ok, name="FuseDyTTanhOnly"),
    ]
    return [pattern.RewriteRuleSet([rule], commute=True) for rule in rules]


def dyt_nodes(model: ir.Model) -> list[ir.Node]:
    """The ``DynamicTanh`` nodes of the main graph."""
    return [n for n in model.graph if n.domain == DOMAIN and n.op_type == OP_TYPE]


def current_form(model: ir.Model) -> str:
    """"function" or "plugin" if the graph holds DynamicTanh nodes (with or without bodies), else "pattern"."""
    if not dyt_nodes(model):
        return "pattern"
    return "function" if any(key[0] == DOMAIN for key in model.functions) else "plugin"


def to_form(model: ir.Model, form: str) -> Counter:
    """Rewrite ``model`` in place into ``form``; returns the count of DyT sites per overload."""
    if form not in FORMS:
        raise unknown_name("DyT form", form, FORMS)
    if form == "pattern":
        return _to_pattern(model)
    counts = _fuse(model)
    if form == "function":
        _attach_functions(model)
    else:
        _mark_plugins(model)
    return counts


def site_counts(model: ir.Model, form: str, counts: Counter | dict[str, int]) -> dict[str, int]:
    """The DyT sites of ``model`` per overload, in every form: ``counts`` (what :func:`to_form`
    returned) for the function and plugin forms; for the pattern form, which a fresh export already
    is (``to_form`` rewrites nothing then, and counts nothing), the sites the form converter
    recognises, counted on a clone of the graph (its tensors shared, not copied)."""
    if form != "pattern" or counts:
        return dict(counts)
    return dict(_fuse(model.clone()))


def dyt_sites(onnx_path: str | Path, form: str, counts: Counter | dict[str, int]) -> dict[str, int]:
    """:func:`site_counts` of an exported file: ``counts`` when they are known, else counted from the
    file when it is kept ({} when it is not, as an OpenVINO export's ONNX step)."""
    if form != "pattern" or counts or not Path(onnx_path).is_file():
        return dict(counts)
    return site_counts(ir.load(onnx_path), form, counts)


def _fuse(model: ir.Model) -> Counter:
    if current_form(model) != "pattern":
        _to_pattern(model)
    for rule_set in _rule_sets():
        rule_set.apply_to_model(model)
    counts: Counter = Counter()
    for node in dyt_nodes(model):
        node.overload = _overload_of(len(node.inputs))
        counts[node.overload] += 1
    model.opset_imports[DOMAIN] = 1
    return counts


def _overload_of(num_inputs: int) -> str:
    return {len(names): overload for overload, names in OVERLOADS.items()}[num_inputs]


def _attach_functions(model: ir.Model) -> None:
    opset = model.opset_imports.get("", 20)
    used = {node.overload for node in dyt_nodes(model)}
    for overload in sorted(used):
        function = ir.serde.deserialize_function(function_proto(overload, opset))
        model.functions[function.identifier()] = function
    for node in dyt_nodes(model):
        for key in ("plugin_namespace", "plugin_version"):
            node.attributes.pop(key, None)


def _mark_plugins(model: ir.Model) -> None:
    for key in [k for k in model.functions if k[0] == DOMAIN]:
        del model.functions[key]
    for node in dyt_nodes(model):
        node.attributes["plugin_namespace"] = ir.AttrString("plugin_namespace", DOMAIN)
        node.attributes["plugin_version"] = ir.AttrString("plugin_version", PLUGIN_VERSION)


def function_proto(overload: str, opset: int) -> onnx.FunctionProto:
    """The body of one overload: Mul -> Tanh [-> Mul gamma] [-> Add beta]."""
    names = OVERLOADS[overload]
    nodes = [helper.make_node("Mul", ["alpha", "x"], ["alpha_x"]), helper.make_node("Tanh", ["alpha_x"], ["t"])]
    last = "t"
    if "gamma" in names:
        nodes.append(helper.make_node("Mul", [last, "gamma"], ["gamma_t"]))
        last = "gamma_t"
    if "beta" in names:
        nodes.append(helper.make_node("Add", [last, "beta"], ["y"]))
        last = "y"
    return helper.make_function(
        DOMAIN, OP_TYPE, list(names), [last], nodes, [helper.make_opsetid("", opset)], overload=overload,
        doc_string="DyT(x) = gamma * tanh(alpha * x) + beta; the shorter overloads drop beta, then gamma.",
    )


def _to_pattern(model: ir.Model) -> Counter:
    counts = Counter(node.overload for node in dyt_nodes(model))
    if current_form(model) == "plugin":
        _attach_functions(model)
    InlinePass()(model)
    RemoveUnusedFunctionsPass()(model)
    RemoveUnusedOpsetsPass()(model)
    return counts


def count_bare_dyt_chains(model: ir.Model) -> int:
    """Mul(scalar) -> Tanh chains left in the main graph (0 in a clean function/plugin form)."""
    count = 0
    for node in model.graph:
        if node.op_type != "Tanh" or node.domain not in ("", "ai.onnx"):
            continue
        producer = node.inputs[0].producer()
        if producer is not None and producer.op_type == "Mul" and any(_is_scalar_const(v) for v in producer.inputs):
            count += 1
    return count
