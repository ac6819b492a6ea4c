"""The AOTInductor model folder the aoti tests share.

Compiling a package runs a C++ compiler (about 10-25 s for the tiniest model on two cores), so a
test session compiles one: the first test that asks builds it with the real ``dyt-build`` command,
and the build, runner, check and service tests all read that folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

NAME = "vit-dyt-aoti"
TINY_VIT = {"depth": 1, "dim": 32, "heads": 2, "img_size": 16, "patch_size": 8, "num_classes": 10}
# Inductor settings that only shorten the C++ compile of the tests' packages (torch's defaults
# precompile AOTInductor's headers, which pays off over many builds, not one)
FAST_COMPILE = {"aot_inductor.precompile_headers": False, "aot_inductor.compile_wrapper_opt_level": "O0"}


@dataclass(frozen=True)
class BuiltFolder:
    """The shared folder: the repository, the folder, the model.pt it was built from, and what
    ``dyt-build`` printed (exit code and output)."""

    repository: Path
    folder: Path
    model_path: Path
    exit_code: int
    output: str

    @property
    def package(self) -> Path:
        return self.folder / "1" / "model.pt2"


_built: list[BuiltFolder] = []


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> BuiltFolder:
    """``repo/vit-dyt-aoti``: a depth-1 DyT ViT (16x16 images, 10 classes) built once per session by
    ``dyt-build model.pt --backend aoti --repository repo --name vit-dyt-aoti``."""
    if not _built:
        _built.append(_build(tmp_path_factory.mktemp("aoti")))
    return _built[0]


def _build(root: Path) -> BuiltFolder:
    from typer.testing import CliRunner

    from dyt_deploy.build_cli import build_app
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.models import create_model

    save_checkpoint(create_model("vit_tiny", norm="dyt", **TINY_VIT), root / "model.pt")
    args = [str(root / "model.pt"), "--backend", "aoti", "--repository", str(root / "repo"), "--name", NAME]
    with torch._inductor.config.patch(FAST_COMPILE):
        result = CliRunner().invoke(build_app, args)
    return BuiltFolder(root / "repo", root / "repo" / NAME, root / "model.pt", result.exit_code, result.output)


def tiny_model() -> torch.nn.Module:
    """The shared folder's model, rebuilt from the same seed (eager PyTorch, the reference)."""
    from dyt_deploy.models import create_model

    return create_model("vit_tiny", norm="dyt", **TINY_VIT)


def images(batch: int, seed: int = 0) -> np.ndarray:
    """A float32 batch the shared model takes: (batch, 3, 16, 16)."""
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16), dtype=np.float32)
