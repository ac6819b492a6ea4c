"""Small DyT ONNX files in every form, and model folders, for the engine tests (imported by the test modules)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dyt_deploy.export.forms import OVERLOADS, function_proto
from dyt_deploy.repository import MANIFEST_FORMAT, config_pbtxt

OVERLOAD_INPUTS = OVERLOADS
_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


# ---- DyT ONNX files ----


def dyt_params(overload: str, channels: int, seed: int, param_shape: Sequence[int] | None = None,
               dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """alpha/gamma/beta of one DyT site (only those its overload keeps)."""
    rng = np.random.default_rng(seed)
    shape = tuple(param_shape) if param_shape is not None else (channels,)
    values = {"alpha": np.array(0.5 + 0.1 * seed, dtype=dtype), "gamma": rng.normal(1, 0.2, shape).astype(dtype),
              "beta": rng.normal(0, 0.2, shape).astype(dtype)}
    return {k: v for k, v in values.items() if k in OVERLOAD_INPUTS[overload]}


def reference(x: np.ndarray, sites: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The DyT chain in numpy, float64: y = gamma * tanh(alpha * x) + beta per site."""
    y = x.astype(np.float64)
    for params in sites:
        y = np.tanh(params["alpha"].astype(np.float64) * y)
        y = y * params["gamma"].astype(np.float64) if "gamma" in params else y
        y = y + params["beta"].astype(np.float64) if "beta" in params else y
    return y


def dyt_function(overload: str, opset: int) -> onnx.FunctionProto:
    """The exporter's own function body for ``overload`` (what dyt-export writes)."""
    return function_proto(overload, opset)


def _site_nodes(form: str, overload: str, x: str, out: str, prefix: str) -> list[onnx.NodeProto]:
    inputs = [x] + [f"{prefix}.{n}" for n in OVERLOAD_INPUTS[overload][1:]]
    if form != "pattern":
        node = helper.make_node("DynamicTanh", inputs, [out], name=f"{prefix}.dyt", domain="dyt_deploy",
                                overload=overload)
        if form == "plugin":
            node.attribute.extend([helper.make_attribute("plugin_namespace", "dyt_deploy"),
                                   helper.make_attribute("plugin_version", "1")])
        return [node]
    names = OVERLOAD_INPUTS[overload]
    nodes = [helper.make_node("Mul", [inputs[1], x], [f"{prefix}.ax"]),
             helper.make_node("Tanh", [f"{prefix}.ax"], [f"{prefix}.t" if len(names) > 2 else out])]
    if "gamma" in names:
        nodes.append(helper.make_node("Mul", [f"{prefix}.t", inputs[2]], [f"{prefix}.gt" if "beta" in names else out]))
    if "beta" in names:
        nodes.append(helper.make_node("Add", [f"{prefix}.gt", inputs[3]], [out]))
    return nodes


def make_dyt_onnx(path: Path, form: str = "pattern", overloads: Sequence[str] = ("",),
                  shape: Sequence[int | str] = ("batch", "seq", 8), param_shape: Sequence[int] | None = None,
                  dtype: Any = np.float32, opset: int = 20) -> list[dict[str, np.ndarray]]:
    """Write an ONNX file with one DyT site per overload (chained, x -> ... -> y); returns each site's params.

    form: "pattern" (Mul/Tanh/Mul/Add), "function" (DynamicTanh nodes with local functions) or
    "plugin" (bodiless DynamicTanh nodes with plugin_namespace/plugin_version).
    """
    elem = _NP_TO_ONNX[np.dtype(dtype)]
    channels = shape[-1] if isinstance(shape[-1], int) else 8
    nodes, initializers, sites = [], [], []
    current = "x"
    for i, overload in enumerate(overloads):
        params = dyt_params(overload, channels, i, param_shape, dtype)
        sites.append(params)
        out = "y" if i == len(overloads) - 1 else f"h{i}"
        nodes += _site_nodes(form, overload, current, out, f"site{i}")
        initializers += [numpy_helper.from_array(v, f"site{i}.{k}") for k, v in params.items()]
        current = out
    graph = helper.make_graph(nodes, "dyt", [helper.make_tensor_value_info("x", elem, list(shape))],
                              [helper.make_tensor_value_info("y", elem, list(shape))], initializers)
    functions = [dyt_function(o, opset) for o in dict.fromkeys(overloads)] if form == "function" else []
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("dyt_deploy", 1)] if form != "pattern" else [])
    model = helper.make_model(graph, opset_imports=opsets, functions=functions, ir_version=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return sites


def make_model_folder(repo: Path, name: str = "tiny-dyt", form: str = "pattern", overloads: Sequence[str] = ("",),
                      shape: Sequence[int | str] = ("batch", "seq", 8), config: dict[str, Any] | None = None,
                      max_batch_size: int = 32) -> Path:
    """A repository model folder REPO/NAME with dyt.json, config.pbtxt and 1/model.onnx."""
    folder = repo / name
    make_dyt_onnx(folder / "1" / "model.onnx", form, overloads, shape)
    inputs = [{"name": "x", "dtype": "float32", "shape": list(shape)}]
    outputs = [{"name": "y", "dtype": "float32", "shape": list(shape)}]
    manifest = {"format": MANIFEST_FORMAT, "format_version": 1, "name": name, "family": "tiny", "norm": "dyt",
                "form": form, "config": config or {}, "inputs": inputs, "outputs": outputs, "dtype": "float32"}
    (folder / "dyt.json").write_text(json.dumps(manifest))
    (folder / "config.pbtxt").write_text(config_pbtxt(name, inputs, outputs, max_batch_size=max_batch_size))
    return folder
