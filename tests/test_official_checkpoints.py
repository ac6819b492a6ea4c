"""Issue 13's "Done when": checkpoints exactly as the DyT paper's training code writes them (timm ViT
with average pooling and ConvNeXt, DyT everywhere, ``{"model", "optimizer", "epoch", "scaler", "args",
"model_ema"}``) export with ``dyt-export FILE`` and no other flag, and ONNX Runtime's output matches
an independently written PyTorch forward (tests/timm_reference.py) within 1e-4.

The full-size models (ViT-S/B, ConvNeXt-T/B at 224 px) are ``slow``: each is exported once for the
module. The unmarked tests do the same with test names that map to tiny configs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
from timm_reference import (
    ConvNextSpec,
    VitSpec,
    convnext_forward,
    convnext_state,
    official_checkpoint,
    vit_forward,
    vit_state,
)
from typer.testing import CliRunner

from dyt_deploy.cli import check_app, export_app

TOLERANCE = 1e-4


@dataclass(frozen=True)
class Case:
    """A model as the official code names it, its reference spec, and the reference's functions."""

    timm_name: str
    spec: Any
    forward: Callable[[dict, Any, torch.Tensor], torch.Tensor]
    state: Callable[[Any, int], dict]

    @property
    def img(self) -> int:
        return self.spec.img


def vit(name: str, spec: VitSpec) -> Case:
    return Case(name, spec, vit_forward, vit_state)


def convnext(name: str, spec: ConvNextSpec) -> Case:
    return Case(name, spec, convnext_forward, convnext_state)


FULL = {
    "vit_small": vit("vit_small_patch16_224", VitSpec(dim=384, depth=12, heads=6)),
    "vit_base": vit("vit_base_patch16_224", VitSpec(dim=768, depth=12, heads=12)),
    "convnext_tiny": convnext("convnext_tiny", ConvNextSpec(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))),
    "convnext_base": convnext("convnext_base", ConvNextSpec(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))),
}
TINY = {
    "vit": vit("test_vit_tiny_patch16_32", VitSpec(dim=64, depth=2, heads=4, img=32, num_classes=10)),
    "convnext": convnext("test_convnext_tiny_32", ConvNextSpec(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64),
                                                               num_classes=7, img=32)),
}
# the tiny configs are the timm names of tests/conftest.py's TINY_TIMM_NAMES
pytestmark = pytest.mark.usefixtures("tiny_timm_names")


@dataclass
class Exported:
    """A checkpoint written as the official code does, and what ``dyt-export FILE [ARGS]`` made of it."""

    case: Case
    checkpoint: Path
    model: dict
    ema: dict | None
    exit_code: int
    output: str

    @property
    def onnx_path(self) -> Path:
        return self.checkpoint.with_suffix(".onnx")


def export_official(folder: Path, case: Case, *args: str, ema: bool = True, installed: bool = False) -> Exported:
    """Write the checkpoint, then run ``dyt-export FILE ARGS``: in this process (the test names are
    registered here), or ``installed``, the console script a user runs."""
    model = case.state(case.spec, 1)
    averaged = case.state(case.spec, 2) if ema else None
    path = folder / "checkpoint-best.pth"
    torch.save(official_checkpoint(model, averaged, case.timm_name, case.spec.num_classes), path)
    if installed:
        done = subprocess.run([str(Path(sys.executable).parent / "dyt-export"), str(path), *args],
                              capture_output=True, text=True, timeout=600)
        return Exported(case, path, model, averaged, done.returncode, done.stdout + done.stderr)
    result = CliRunner().invoke(export_app, [str(path), *args])
    return Exported(case, path, model, averaged, result.exit_code, result.output)


def pixels(img: int, batch: int = 2) -> torch.Tensor:
    return torch.randn((batch, 3, img, img), generator=torch.Generator().manual_seed(11))


def onnx_logits(onnx_path: Path, inputs: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]


def max_diff(exported: Exported, state: dict, onnx_path: Path | None = None) -> float:
    """Largest |ONNX Runtime - reference| over the logits of one batch, the reference run on ``state``
    (``onnx_path`` default: the export beside the checkpoint)."""
    inputs = pixels(exported.case.img)
    with torch.no_grad():
        expected = exported.case.forward(state, exported.case.spec, inputs).numpy()
    got = onnx_logits(onnx_path or exported.onnx_path, inputs)
    assert got.shape == expected.shape == (2, exported.case.spec.num_classes)
    return float(np.max(np.abs(got.astype(np.float64) - expected)))


def assert_exported(exported: Exported, weights_line: str) -> None:
    assert exported.exit_code == 0, exported.output
    lines = exported.output.splitlines()
    assert any(line.startswith("PASSED") for line in lines), exported.output
    assert weights_line in lines, exported.output


# -- tiny sizes (every run) ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_official_checkpoint_exports_with_no_flags(tmp_path: Path, name: str) -> None:
    exported = export_official(tmp_path, TINY[name])
    assert_exported(exported, "weights: model_ema (EMA)")
    assert max_diff(exported, exported.ema) <= TOLERANCE
    assert max_diff(exported, exported.model) > 100 * TOLERANCE  # the EMA weights, not the model's


def test_an_unknown_weights_choice_is_refused_by_flag(tmp_path: Path) -> None:
    exported = export_official(tmp_path, TINY["vit"], "--weights", "best")
    assert exported.exit_code == 2
    assert "error: --weights: unknown weights 'best'; choose one of model, ema" in exported.output
    assert not exported.onnx_path.exists()


def test_weights_model_exports_the_trained_weights_and_dyt_check_follows(tmp_path: Path) -> None:
    """--weights model exports the model's weights; the folder records them, so its check loads them too
    (with the EMA weights as reference, parity would fail); dyt-check on the checkpoint takes the flag."""
    exported = export_official(tmp_path, TINY["vit"], "--weights", "model", "--repository", str(tmp_path / "repo"),
                               "--name", "vit")
    assert_exported(exported, "weights: model")
    onnx_path = tmp_path / "repo" / "vit" / "1" / "model.onnx"
    assert max_diff(exported, exported.model, onnx_path) <= TOLERANCE
    result = CliRunner().invoke(check_app, [str(tmp_path / "repo" / "vit")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(check_app, [str(exported.checkpoint), "--runners", "ort", "--weights", "model"])
    assert result.exit_code == 0, result.output
    assert "FAILED" not in result.output


# -- full sizes (slow) -----------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(FULL))
def full_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """One export per full-size model for the whole module, by the installed ``dyt-export`` (each takes
    20-70 s here, writing the checkpoint included)."""
    return export_official(tmp_path_factory.mktemp(request.param), FULL[request.param], installed=True)


@pytest.mark.slow
def test_official_checkpoint_exports_with_no_flags(full_export: Exported) -> None:
    assert_exported(full_export, "weights: model_ema (EMA)")


@pytest.mark.slow
def test_onnx_runtime_matches_the_independent_forward(full_export: Exported) -> None:
    assert full_export.exit_code == 0, full_export.output
    assert max_diff(full_export, full_export.ema) <= TOLERANCE
