"""Staged writes: complete outputs or none, and no leftovers from a failed write."""

from __future__ import annotations

import pytest

from dyt_deploy.errors import DytDeployError
from dyt_deploy.repository import staged_file, staged_folder


def _everything(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_failed_write_into_new_folders_leaves_nothing(tmp_path):
    for stager, target in ((staged_file, tmp_path / "a" / "b" / "model.onnx"),
                           (staged_folder, tmp_path / "repo" / "new" / "vit-dyt")):
        with pytest.raises(RuntimeError), stager(target) as stage:
            (stage / "partial").write_text("half")
            raise RuntimeError("interrupted")
        assert _everything(tmp_path) == []  # no staging folder, no empty parents


def test_failed_write_keeps_existing_output_and_its_folder(tmp_path):
    target = tmp_path / "repo" / "vit-dyt"
    target.mkdir(parents=True)
    (target / "dyt.json").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(target, force=True) as stage:
        (stage / "dyt.json").write_text("new")
        raise RuntimeError("interrupted")
    assert (target / "dyt.json").read_text() == "old"
    assert _everything(tmp_path) == ["repo", "repo/vit-dyt", "repo/vit-dyt/dyt.json"]


def test_successful_writes_replace_and_create(tmp_path):
    target = tmp_path / "out" / "model.onnx"
    with staged_file(target) as stage:
        (stage / "model.onnx").write_text("v1")
        (stage / "model.onnx.data").write_text("weights")
    assert target.read_text() == "v1" and (target.parent / "model.onnx.data").read_text() == "weights"
    with pytest.raises(DytDeployError, match="--force"), staged_file(target):
        pass
    folder = tmp_path / "repo" / "m"
    for version in ("v1", "v2"):
        with staged_folder(folder, force=True) as stage:
            (stage / "dyt.json").write_text(version)
    assert (folder / "dyt.json").read_text() == "v2"
    assert _everything(tmp_path / "repo") == ["m", "m/dyt.json"]
