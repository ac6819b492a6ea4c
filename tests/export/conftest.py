"""Shared fixtures of the exporter tests: tiny zoo checkpoints and a session cache of their exports.

Every zoo architecture is built at depth 1 (and a small image / vocabulary) so one export takes a
few seconds; ``zoo_export(arch, norm)`` exports each (arch, norm) pair once per session in the
pattern form, then converts that file to the function form, and hands both to every test that asks.
Its DyT layers get random gamma and beta (not the ones/zeros of a fresh layer), so tests that fold
gamma/beta into linear layers can start from the same file.
Tests must not modify the cached files: they write their own outputs under ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.export import ExportResult, FormConversion, convert_form_file, export_onnx
from dyt_deploy.models import create_model
from dyt_deploy.models.base import ZooModel
from dyt_deploy.nn import DynamicTanh


def small_overrides(arch: str) -> dict:
    """Config overrides that keep every architecture's structure but make it fast to export."""
    if arch.startswith("convnext"):
        return {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64), "img_size": 32, "num_classes": 10}
    overrides: dict = {"depth": 1}
    if arch.startswith("vit"):
        overrides.update(img_size=32, num_classes=10)
    else:
        overrides.update(vocab_size=128)
    return overrides


def build_model(arch: str, norm: str, seed: int = 0, random_affine: bool = False) -> ZooModel:
    """A small zoo model; ``random_affine`` gives every DyT non-trivial gamma (and beta)."""
    model = create_model(arch, norm=norm, seed=seed, **small_overrides(arch))
    if random_affine:
        randomize_dyt_affine(model, seed)
    return model


def randomize_dyt_affine(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DynamicTanh):
                module.weight.copy_(1.0 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                if module.bias is not None:
                    module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=generator))


def count_dyt_modules(model: torch.nn.Module) -> int:
    return sum(isinstance(m, DynamicTanh) for m in model.modules())


@dataclass
class ZooExport:
    arch: str
    norm: str
    model: ZooModel
    checkpoint: Path
    pattern: Path
    function: Path
    result: ExportResult
    conversion: FormConversion


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_checkpoint(arch, norm, random_affine=False)`` -> a model.pt under ``tmp_path``."""

    def make(arch: str = "vit_tiny", norm: str = "dyt", random_affine: bool = False, name: str = "model.pt") -> Path:
        return save_checkpoint(build_model(arch, norm, random_affine=random_affine), tmp_path / name)

    return make


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], ZooExport]:
    """``zoo_export(arch, norm)``: the pattern export and its function-form conversion, made once."""
    cache: dict[tuple[str, str], ZooExport] = {}

    def get(arch: str, norm: str) -> ZooExport:
        if (arch, norm) not in cache:
            folder = tmp_path_factory.mktemp(f"{arch}-{norm}")
            model = build_model(arch, norm, random_affine=True)
            checkpoint = save_checkpoint(model, folder / "model.pt")
            result = export_onnx(checkpoint, folder / "pattern.onnx", form="pattern")
            conversion = convert_form_file(folder / "pattern.onnx", folder / "function.onnx", "function")
            cache[arch, norm] = ZooExport(arch, norm, model, checkpoint, folder / "pattern.onnx",
                                          folder / "function.onnx", result, conversion)
        return cache[arch, norm]

    return get
