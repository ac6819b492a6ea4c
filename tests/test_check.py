"""dyt-check: passes on good models, fails with exit code 1 and a readable table on a corrupted one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from dyt_deploy.check import check_model
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.cli import check_app
from dyt_deploy.export import export_onnx
from dyt_deploy.models import create_model

cli = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    path = save_checkpoint(create_model("llama_tiny", norm="dyt", depth=1), root / "model.pt")
    return export_onnx(path, repository=root / "repo", name="llama-dyt").model_dir


def test_good_folder_passes(folder, tmp_path):
    report = tmp_path / "check.json"
    result = cli.invoke(check_app, [str(folder), "--runners", "ort,torch", "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "PASSED ort vs PyTorch" in result.output and "PASSED torch vs PyTorch" in result.output
    figures = json.loads(report.read_text())
    assert figures["ort"]["passed"] and figures["ort"]["outputs"]["logits"]["max_abs"] < 1e-4
    assert len({str(s) for s in figures["ort"]["shapes"]}) > 1  # checked at more than one shape


def test_model_pt_is_exported_on_the_fly(folder):
    reports = check_model(folder.parent.parent / "model.pt", runners=["ort"], samples=2)
    assert reports["ort"].passed and reports["ort"].outputs["logits"].cosine > 0.9999


def test_corrupted_onnx_fails_with_exit_code_1(folder, tmp_path):
    broken = tmp_path / "llama-dyt"
    shutil.copytree(folder, broken)
    onnx_file = broken / "1" / "model.onnx"
    model = onnx.load(onnx_file)
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight matrix
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.05, weight.name))
    onnx.save(model, onnx_file)
    report = tmp_path / "check.json"
    result = cli.invoke(check_app, [str(broken), "--runners", "ort", "--json", str(report)])
    assert result.exit_code == 1, result.output
    assert "FAILED ort vs PyTorch" in result.output
    assert "max abs" in result.output and "FAIL" in result.output  # the table is printed
    assert json.loads(report.read_text())["ort"]["passed"] is False


def test_missing_reference_is_a_clear_error(folder, tmp_path):
    moved = tmp_path / "llama-dyt"
    shutil.copytree(folder, moved)
    manifest = json.loads((moved / "dyt.json").read_text())
    manifest["source"]["path"] = str(tmp_path / "gone.pt")
    (moved / "dyt.json").write_text(json.dumps(manifest))
    result = cli.invoke(check_app, [str(moved)])
    assert result.exit_code == 2
    assert "error:" in result.output and "gone.pt" in result.output


def test_unknown_runner_lists_the_known_ones(folder):
    result = cli.invoke(check_app, [str(folder), "--runners", "ort,tpu"])
    assert result.exit_code == 2
    assert "unknown runner 'tpu'" in result.output and "torch-compile" in result.output


def test_trt_without_engine_says_how_to_build_one(folder):
    result = cli.invoke(check_app, [str(folder), "--runners", "trt"])
    assert result.exit_code == 2 and "dyt-build" in result.output


def test_check_with_the_triton_kernels(folder, tmp_path):
    pytest.importorskip("triton", reason="Triton not installed")
    report = tmp_path / "check.json"
    result = cli.invoke(check_app, [str(folder), "--runners", "torch-triton", "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "PASSED torch-triton vs PyTorch" in result.output
    assert json.loads(report.read_text())["torch-triton"]["outputs"]["logits"]["max_abs"] < 1e-4


def test_a_convnext_folder_with_channels_first_dyt_in_the_function_form_passes(tmp_path):
    # ConvNeXt's stem, downsample and head norms are channels-first DyT: per-channel gamma over dim 1
    model = create_model("convnext_tiny", norm="dyt", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), img_size=32,
                         num_classes=10)
    path = save_checkpoint(model, tmp_path / "convnext.pt")
    model_dir = export_onnx(path, repository=tmp_path / "repo", name="convnext-dyt", form="function",
                            fold=True).model_dir

    result = cli.invoke(check_app, [str(model_dir), "--runners", "ort,torch"])

    assert result.exit_code == 0, result.output
    assert "PASSED ort vs PyTorch" in result.output and "PASSED torch vs PyTorch" in result.output
