"""The benchmark's ONNX variants: dyt-folded is the dyt export folded, verified on its own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from dyt_deploy.bench.variants import export_variants, optimize, zoo_variants
from dyt_deploy.errors import DytDeployError


def op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(path).graph.node)


def test_folded_variant_is_the_dyt_export_with_gamma_and_beta_folded(tmp_path: Path) -> None:
    exported = export_variants(zoo_variants("vit_tiny", ["dyt", "dyt-folded"], depth=1, img_size=32), tmp_path)
    files = exported.files

    assert files["dyt"] != files["dyt-folded"] and files["dyt-folded"].is_file()
    plain, folded = op_counts(files["dyt"]), op_counts(files["dyt-folded"])
    assert folded["Tanh"] == plain["Tanh"] == 3  # one per DyT: two per block, one final
    assert folded["Mul"] < plain["Mul"]  # the gamma multiplies went into the weights that follow
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["vit_tiny-dyt-folded.onnx", "vit_tiny-dyt.onnx"]


def test_ort_transformers_refuses_families_it_has_no_fusions_for(tmp_path: Path) -> None:
    convnext = zoo_variants("convnext_tiny", ["dyt"], depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), img_size=32)
    assert convnext.ort_model is None
    with pytest.raises(DytDeployError, match="ort-transformers has no fusions for this kind of model; use onnxscript"):
        optimize(tmp_path / "model.onnx", "ort-transformers", convnext.ort_model)
