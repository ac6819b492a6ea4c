"""The benchmark's ONNX variants: dyt-folded is the dyt export folded, verified on its own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from dyt_deploy.bench.variants import export_variants, optimize, write_checkpoints
from dyt_deploy.errors import DytDeployError


def op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(path).graph.node)


def test_folded_variant_is_the_dyt_export_with_gamma_and_beta_folded(tmp_path: Path) -> None:
    checkpoints = write_checkpoints("vit_tiny", ["dyt", "dyt-folded"], tmp_path, depth=1, img_size=32)
    files = export_variants(checkpoints, tmp_path)

    assert files["dyt"] != files["dyt-folded"] and files["dyt-folded"].is_file()
    plain, folded = op_counts(files["dyt"]), op_counts(files["dyt-folded"])
    assert folded["Tanh"] == plain["Tanh"] == 3  # one per DyT: two per block, one final
    assert folded["Mul"] < plain["Mul"]  # the gamma multiplies went into the weights that follow
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["vit_tiny-dyt-folded.onnx", "vit_tiny-dyt.onnx"]


def test_ort_transformers_refuses_families_it_has_no_fusions_for(tmp_path: Path) -> None:
    with pytest.raises(DytDeployError, match="ort-transformers has no fusions for convnext models; use onnxscript"):
        optimize(tmp_path / "model.onnx", "ort-transformers", "convnext_tiny")
