"""The fp32 model INT8 starts from, and the reference it is judged against.

A checkpoint (anything dyt-export reads) is exported to ONNX as dyt-export does (pattern form,
fp32) and folded; its reference is the PyTorch module in fp32. An exported ``.onnx`` is taken as it
is (a function form is rewritten into the pattern form, and it is folded too); its reference is
that file in onnxruntime. A reference twin (``dyt train-reference``) brings its held-out test set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DytDeployError
from ..export.config import ExportConfig
from ..export.steps import Steps
from .verify import Infer, torch_reference


@dataclass
class Fp32Source:
    """The fp32 ONNX file (in a work folder), its reference, and what is known of the model."""

    onnx: Path
    reference: Infer
    path: Path
    format: str
    label: str
    arch: str | None = None
    norm: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    fold: dict[str, int] | None = None
    test_data: Path | None = None


def fp32_source(model_path: Path, export: ExportConfig, fold: bool, work: Path, steps: Steps) -> Fp32Source:
    """The fp32 ONNX of ``model_path`` in ``work`` (see the module docstring)."""
    if model_path.suffix == ".onnx":
        return _from_onnx(model_path, fold, work, steps)
    return _from_checkpoint(model_path, export, fold, work, steps)


def _from_onnx(path: Path, fold: bool, work: Path, steps: Steps) -> Fp32Source:
    import onnx_ir as ir

    from ..export.fold import fold_dyt_affine
    from ..export.forms import to_form
    from ..export.steps import save_onnx

    if not path.is_file():
        raise DytDeployError(f"{path}: no such file")
    try:
        model = ir.load(path)
    except Exception as err:  # protobuf and IR errors: the file is not ONNX
        raise DytDeployError(f"{path}: not a readable ONNX model ({err})") from None
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") for n in model.graph):
        raise DytDeployError(f"{path}: already quantized; dyt quantize takes an fp32 model")
    with steps("rewrite DyT into the pattern form" + (" and fold gamma/beta" if fold else "")):
        to_form(model, "pattern")
        report = fold_dyt_affine(model) if fold else None
        target = work / "fp32.onnx"
        save_onnx(model, target)
    return Fp32Source(target, _onnx_reference(path), path, "onnx", str(path),
                      norm=None, fold=None if report is None else asdict(report))


def _onnx_reference(path: Path) -> Infer:
    from ..runners import create_runner

    runner = create_runner("ort", path)
    runner.activate()

    def infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return runner.infer(feed)

    return infer


def _from_checkpoint(path: Path, export: ExportConfig, fold: bool, work: Path, steps: Steps) -> Fp32Source:
    from ..checkpoint import load_checkpoint, source_label
    from ..export import signature as sig
    from ..export.api import torch_to_onnx
    from ..export.fold import fold_dyt_affine
    from ..export.steps import guess_norm, save_onnx

    with steps(f"load {source_label(path)}"):
        loaded = load_checkpoint(path, arch=export.arch, trust_pickle=export.trust_pickle, weights=export.weights)
    specs = sig.input_specs(loaded.model, list(export.input_shapes or []), export.dynamic)
    with steps(f"export to ONNX (opset {export.opset}, fp32)"):
        model = torch_to_onnx(loaded.model, specs, "fp32", export.opset)
    report = None
    if fold:
        with steps("fold DyT gamma/beta into linear layers"):
            report = fold_dyt_affine(model)
    target = work / "fp32.onnx"
    save_onnx(model, target)
    outputs = [v.name for v in model.graph.outputs]
    return Fp32Source(target, torch_reference(loaded.model, specs, outputs), path, loaded.source_format,
                      source_label(path), loaded.arch, loaded.norm or guess_norm(loaded.model), loaded.config,
                      loaded.weights, None if report is None else asdict(report), _twin_test_data(path))


def _twin_test_data(path: Path) -> Path | None:
    """A reference twin's held-out set (``DIR/test.npz`` beside ``DIR/card.json``), else None."""
    from ..reference.card import card_of_checkpoint

    found = card_of_checkpoint(path) if path.is_file() else None
    if found is None:
        return None
    test = path.resolve().parent.parent / found[0].get("test_data", "test.npz")
    return test if test.is_file() else None
