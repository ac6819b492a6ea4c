"""Where onnxruntime spends a model's time: per op type, and the share of norm-related nodes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..export.fold import _find_sites
from ..runners.onnxruntime_runner import OnnxRuntimeRunner

NORM_OP_TYPES = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                 "SkipSimplifiedLayerNormalization", "RMSNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal"}


def dyt_node_names(onnx_path: Path) -> set[str]:
    """Names of the nodes of every DyT chain (Mul alpha, Tanh, Mul gamma, Add beta) in a pattern-form file."""
    graph = ir.load(onnx_path).graph
    names: set[str] = set()
    for tanh in (n for n in graph if n.op_type == "Tanh"):
        producer = tanh.inputs[0].producer()
        if producer is not None and producer.op_type == "Mul":
            names.update({tanh.name, producer.name})
    for site in _find_sites(graph):
        names.update(n.name for n in (site.gamma_mul, site.beta_add) if n is not None)
    return names


def op_time_share(onnx_path: Path, feed: dict[str, np.ndarray], runs: int = 20, threads: int = 0,
                  opt_level: str = "all") -> dict:
    """Profile ``runs`` inferences; returns microseconds per op type and the norm-related share.

    Norm-related: LayerNorm-family kernels (and the reductions of an unfused RMSNorm) plus the
    nodes of DyT chains, identified by name in the file (onnxruntime's profiler keeps node names).
    """
    dyt_nodes = dyt_node_names(onnx_path)
    runner = OnnxRuntimeRunner(onnx_path, threads=threads, opt_level=opt_level, profile=True)
    with runner:
        for _ in range(runs):
            runner.infer(feed)
        trace = Path(runner.end_profiling())
    by_op: Counter = Counter()
    norm_us = 0.0
    for event in json.loads(trace.read_text()):
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        node = event["name"][: -len("_kernel_time")]
        by_op[op] += event.get("dur", 0)
        if op in NORM_OP_TYPES or node in dyt_nodes:
            norm_us += event.get("dur", 0)
    trace.unlink(missing_ok=True)
    total = sum(by_op.values())
    return {"op_us_per_run": {k: v / runs for k, v in by_op.most_common()}, "total_us_per_run": total / runs,
            "norm_share": norm_us / total if total else 0.0}
