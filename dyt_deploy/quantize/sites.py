"""Which linear layers an INT8 model quantizes, and where each one's input range comes from.

A *linear layer* here is a ``MatMul`` whose second input is a constant 2-D weight (``nn.Linear``
as torch exports it; attention's activation x activation MatMuls are not). Each is classified by
what produces its input:

- ``dyt-folded``: ``Tanh(Mul(x, alpha))``, a DyT whose gamma/beta were folded into this layer
  (dyt-export ``--fold``). Its input lies in [-1, 1] by construction: scale 1/127, zero point 0.
- ``dyt``: ``Add(Mul(Tanh(Mul(x, alpha)), gamma), beta)`` (or without beta): bounded by
  ``max(|gamma| + |beta|)`` over the channels, so its scale is that bound / 127, zero point 0.
- ``layernorm`` / ``rmsnorm``: a LayerNormalization node, or the mean-of-squares pattern of an
  RMSNorm: the range depends on the data (calibration, or ranges measured at run time).
- ``other``: everything else (attention output projection, MLP second layer, ...).

Only the first two kinds get a scale from the graph alone; that is what this module computes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

DYT_KINDS = ("dyt-folded", "dyt")
NORM_KINDS = ("layernorm", "rmsnorm")
KINDS = DYT_KINDS + NORM_KINDS + ("other",)
INT8_MAX = 127.0


@dataclass(frozen=True)
class LinearSite:
    """One linear layer: its node, the activation it reads, where that comes from, and (DyT kinds)
    the bound of ``|input|`` the graph guarantees."""

    node: str
    input: str
    kind: str
    bound: float | None = None

    @property
    def fixed(self) -> bool:
        """Whether the input's INT8 scale is known from the graph (no data)."""
        return self.bound is not None

    @property
    def scale(self) -> float | None:
        """The symmetric INT8 scale ``bound / 127`` (zero point 0); None when data must decide."""
        return None if self.bound is None else self.bound / INT8_MAX


class _Graph:
    """Producers, constants and scalar lookups of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.constants = {init.name: init for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute:
                attr = node.attribute[0]
                if attr.name == "value":
                    self.constants[node.output[0]] = attr.t
        self.producer = {out: node for node in graph.node for out in node.output}

    def const(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def split_const(self, node: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
        """For a binary node with one constant input: (the other input, the constant)."""
        values = [self.const(name) for name in node.input]
        if len(values) != 2 or (values[0] is None) == (values[1] is None):
            return None
        k = 0 if values[0] is not None else 1
        return node.input[1 - k], values[k]


def linear_sites(model: onnx.ModelProto) -> list[LinearSite]:
    """Every linear layer of ``model`` (nodes must be named), in graph order, classified."""
    graph = _Graph(model)
    sites = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        weight = graph.const(node.input[1])
        if weight is None or weight.ndim != 2 or graph.const(node.input[0]) is not None:
            continue
        kind, bound = _classify(graph, node.input[0])
        sites.append(LinearSite(node.name, node.input[0], kind, bound))
    return sites


def _classify(graph: _Graph, name: str) -> tuple[str, float | None]:
    if _is_dyt_tanh(graph, name):
        return "dyt-folded", 1.0
    bound = _dyt_affine_bound(graph, name)
    if bound is not None:
        return "dyt", bound
    if graph.made_by(name, "LayerNormalization") is not None:
        return "layernorm", None
    if graph.made_by(name, "RMSNormalization") is not None or graph.made_by(name, "SimplifiedLayerNormalization") \
            is not None or _is_rms_pattern(graph, name):
        return "rmsnorm", None
    return "other", None


def _is_dyt_tanh(graph: _Graph, name: str) -> bool:
    """``name`` is ``Tanh(alpha * x)`` with a scalar constant alpha (DyT's core)."""
    tanh = graph.made_by(name, "Tanh")
    scale = None if tanh is None else graph.made_by(tanh.input[0], "Mul")
    split = None if scale is None else graph.split_const(scale)
    return split is not None and split[1].size == 1


def _dyt_affine_bound(graph: _Graph, name: str) -> float | None:
    """``max(|gamma| + |beta|)`` when ``name`` is ``gamma * tanh(alpha * x) [+ beta]``, else None."""
    beta = np.zeros(1, np.float32)
    add = graph.made_by(name, "Add")
    if add is not None:
        split = graph.split_const(add)
        if split is None:
            return None
        name, beta = split
    mul = graph.made_by(name, "Mul")
    split = None if mul is None else graph.split_const(mul)
    if split is None or not _is_dyt_tanh(graph, split[0]):
        return None
    gamma = split[1].astype(np.float64).reshape(-1)
    beta = beta.astype(np.float64).reshape(-1)
    if beta.size not in (1, gamma.size):
        return None
    return float(np.max(np.abs(gamma) + np.abs(beta)))


def _is_rms_pattern(graph: _Graph, name: str, depth: int = 4) -> bool:
    """``weight * x / sqrt(mean(x^2) + eps)`` as torch decomposes RMSNorm: a ReduceMean of a Pow
    or Mul among the few producers above ``name``."""
    frontier, ops = [name], Counter()
    for _ in range(depth):
        nodes = [graph.producer[n] for n in frontier if n in graph.producer]
        ops.update(n.op_type for n in nodes)
        frontier = [i for n in nodes for i in n.input]
    return ops["ReduceMean"] > 0 and (ops["Sqrt"] + ops["Rsqrt"] + ops["Reciprocal"]) > 0


def counts(sites: list[LinearSite]) -> dict[str, int]:
    """Linear layers per input kind, in :data:`KINDS` order (kinds with none left out)."""
    found = Counter(s.kind for s in sites)
    return {kind: found[kind] for kind in KINDS if found[kind]}


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (quantization selects nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
