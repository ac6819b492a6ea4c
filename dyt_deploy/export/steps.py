"""What every export path shares (the ONNX export in ``api``, decoders with a KV cache in ``decoder``,
AOTInductor packages in ``aoti``): the result and error types, the timed steps, the fp16 preparation
and the ONNX writer. Below those modules, so none of them imports another for these."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch
from torch import nn

from ..errors import DytDeployError
from ..nn.convert import norm_kind_of
from ..parity import ParityReport
from .fold import FoldReport

_EXTERNAL_DATA_BYTES = 1536 << 20  # above this, weights go to a .data file beside the .onnx (2 GB protobuf limit)

Progress = Callable[[str, str, float], None]  # (event "start"|"done", step, seconds)


class ExportError(DytDeployError):
    """torch.onnx.export could not capture the model."""


class VerificationFailed(DytDeployError):
    """The ONNX outputs are not within tolerance of PyTorch's; ``result`` holds the figures."""

    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class ExportResult:
    """What an export produced: paths, form, folding, parity and the manifest it wrote.

    For backend openvino, ``onnx_path`` is where the ONNX was verified (not kept: the folder holds
    the IR at ``ir_path``), ``parity`` the ONNX's and ``ir_parity`` the IR's.
    """

    onnx_path: Path
    model_dir: Path | None
    form: str
    form_counts: dict[str, int]
    fold: FoldReport | None
    parity: ParityReport | None
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    weights: str | None = None  # the training checkpoint's entry the weights came from (LoadedModel.weights)
    backend: str = "onnxruntime"
    ir_path: Path | None = None  # backend openvino: the folder's 1/model.xml (the ONNX is not kept)
    ir_parity: ParityReport | None = None  # backend openvino: the IR in OpenVINO vs PyTorch
    decoding: dict[str, Any] | None = None  # task text-generation: greedy decoding in ONNX vs PyTorch


class Steps:
    """Times named steps and tells ``progress`` when each starts and ends."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        if self.progress:
            self.progress("start", step, 0.0)
        start = time.perf_counter()
        yield
        self.times[step] = time.perf_counter() - start
        if self.progress:
            self.progress("done", step, self.times[step])


class Fp32Norm(nn.Module):
    """Runs a LayerNorm/RMSNorm in fp32 inside an fp16 model: the mean and variance of fp16
    activations overflow easily; DyT has no statistics and stays fp16."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


def prepare_for_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """The module to export: ``model`` itself for fp32; an fp16 copy with fp32 norms for fp16."""
    if dtype == "fp32":
        return model
    half = copy.deepcopy(model).half()
    for name, module in list(half.named_modules()):
        if norm_kind_of(module) in ("layernorm", "rmsnorm"):
            parent_name, _, child = name.rpartition(".")
            setattr(half.get_submodule(parent_name) if parent_name else half, child, Fp32Norm(module))
    return half


def save_onnx(model: ir.Model, path: Path) -> None:
    """Write one .onnx file, or .onnx + .onnx.data beside it when the weights pass ~1.5 GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    external = f"{path.name}.data" if weight_bytes > _EXTERNAL_DATA_BYTES else None
    ir.save(model, path, external_data=external)


def guess_norm(model: nn.Module) -> str | None:
    """The norm most of ``model``'s norm layers are (None without any)."""
    kinds = Counter(k for m in model.modules() if (k := norm_kind_of(m)) is not None)
    return kinds.most_common(1)[0][0] if kinds else None
