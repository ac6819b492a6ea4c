"""dyt-export --repository R --backend openvino: a Triton OpenVINO model folder (1/model.xml +
model.bin, config.pbtxt with backend "openvino", dyt.json), the IR verified in OpenVINO before the
folder is published; refused options and a failed verification leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_model
from typer.testing import CliRunner

from dyt_deploy.check import check_model
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.cli import export_app
from dyt_deploy.errors import OptionError
from dyt_deploy.export import ExportConfig, VerificationFailed, export_onnx
from dyt_deploy.nn import DynamicTanh
from dyt_deploy.repository import sha256_file
from dyt_deploy.runners import create_runner, runner_for_folder
from dyt_deploy.triton_config import read_config

cli = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A depth-1 BERT (two INT64 inputs, batch and seq dynamic) with random DyT gamma/beta."""
    model = build_model("bert_tiny", "dyt", random_affine=True)
    return save_checkpoint(model, tmp_path_factory.mktemp("openvino") / "model.pt"), model


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory: pytest.TempPathFactory):
    path, _ = checkpoint
    repo = tmp_path_factory.mktemp("repo")
    return export_onnx(path, repository=repo, name="bert-ov", backend="openvino", form="function")


def test_folder_layout_and_config(folder) -> None:
    model_dir = folder.model_dir
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    assert files == ["1/model.bin", "1/model.xml", "config.pbtxt", "dyt.json"]  # no ONNX left, no staging
    assert folder.ir_path == model_dir / "1" / "model.xml"
    config = read_config(model_dir)  # Triton's own ModelConfig schema
    assert config.backend == "openvino" and config.platform == ""
    assert config.name == "bert-ov" and config.max_batch_size > 0
    assert [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert list(config.input[0].dims) == [-1]  # seq stays dynamic; batch is Triton's


def test_manifest_records_backend_parity_and_artifacts(folder) -> None:
    model_dir = folder.model_dir
    manifest = json.loads((model_dir / "dyt.json").read_text())
    assert manifest["backend"] == "openvino" and manifest["form"] == "function"
    assert manifest["parity"]["passed"] and manifest["onnx_parity"]["passed"]
    for key, report in (("parity", folder.ir_parity), ("onnx_parity", folder.parity)):
        assert manifest[key]["outputs"]["logits"]["max_abs"] == report.outputs["logits"].max_abs
    assert manifest["artifacts"] == {name: sha256_file(model_dir / name) for name in ("1/model.xml", "1/model.bin")}
    assert "openvino" in manifest["versions"]
    xml = (model_dir / "1" / "model.xml").read_text()
    assert 'element_type="f16"' not in xml  # weights stay fp32


def test_the_folder_runs_like_pytorch(folder, checkpoint) -> None:
    _, model = checkpoint
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, 128, (2, 7)).astype(np.int64), "attention_mask": np.ones((2, 7), np.int64)}
    with runner_for_folder(folder.model_dir, threads=1) as runner:
        assert runner.name == "openvino"
        got = runner.infer(feed)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feed[n]) for n in ("input_ids", "attention_mask"))).numpy()
    assert list(got) == ["logits"]
    np.testing.assert_allclose(got["logits"], expected, atol=1e-4, rtol=1e-3)


def test_dyt_check_on_the_openvino_folder(folder) -> None:
    reports = check_model(folder.model_dir, samples=2)  # default runner for an IR folder: openvino
    assert list(reports) == ["openvino"] and reports["openvino"].passed
    with pytest.raises(Exception, match="OpenVINO IR: use --runners openvino"):
        check_model(folder.model_dir, runners=["ort"], samples=1)


def test_the_folded_pattern_form_converts(checkpoint, tmp_path) -> None:
    """(The ``folder`` fixture converts the function form.)"""
    path, _ = checkpoint
    done = export_onnx(path, repository=tmp_path, name="m", backend="openvino", form="pattern", fold=True, samples=1)
    assert done.ir_parity.passed and done.parity.passed
    assert (tmp_path / "m" / "1" / "model.xml").is_file()


def test_refused_options_name_their_fields(checkpoint, tmp_path) -> None:
    with pytest.raises(OptionError) as caught:
        ExportConfig(backend="openvino", form="plugin", dtype="fp16")
    fields = [field for field, _ in caught.value.problems]
    assert fields == ["backend", "form", "dtype"]  # no repository, the plugin form, fp16: all at once
    assert "plugin form" in str(caught.value)
    with pytest.raises(OptionError, match="unknown backend 'tvm'; choose one of onnxruntime, openvino"):
        ExportConfig(backend="tvm")
    path, _ = checkpoint
    result = cli.invoke(export_app, [str(path), "--repository", str(tmp_path / "r"), "--backend", "openvino",
                                     "--form", "plugin"])
    assert result.exit_code == 2 and "--form: OpenVINO cannot run the plugin form" in result.output
    assert not (tmp_path / "r").exists()


def test_failed_verification_publishes_nothing(checkpoint, tmp_path) -> None:
    """atol=rtol=0: the ONNX differs from PyTorch in the last bits; nothing is converted or written."""
    path, _ = checkpoint
    with pytest.raises(VerificationFailed):
        export_onnx(path, repository=tmp_path / "repo", name="m", backend="openvino", atol=0, rtol=0, samples=1)
    assert not (tmp_path / "repo").exists()


def test_cli_writes_the_folder_and_prints_both_checks(checkpoint, tmp_path) -> None:
    path, _ = checkpoint
    result = cli.invoke(export_app, [str(path), "--repository", str(tmp_path), "--name", "ov", "--backend",
                                     "openvino", "--samples", "1"])
    assert result.exit_code == 0, result.output
    assert "OpenVINO IR (CPU) vs PyTorch" in result.output and "ONNX (onnxruntime CPU) vs PyTorch" in result.output
    # the ONNX step is dropped after conversion: its DyT sites were counted before, for the output and dyt.json
    layers = sum(isinstance(m, DynamicTanh) for m in checkpoint[1].modules())
    assert f"form: pattern (DyT sites: {layers} full)" in result.output
    assert json.loads((tmp_path / "ov" / "dyt.json").read_text())["dyt_sites"] == {"": layers}
    with create_runner("openvino", tmp_path / "ov" / "1" / "model.xml") as runner:
        assert runner.input_names == ["input_ids", "attention_mask"]
