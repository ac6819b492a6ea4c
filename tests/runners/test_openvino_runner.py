"""The openvino runner: every DyT form OpenVINO can run gives PyTorch's outputs, the plugin form is
refused, IR keeps fp32 weights and the ONNX names, and its options say what they accept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dyt_deploy.check import check_model
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.cli import check_app
from dyt_deploy.errors import UnknownNameError
from dyt_deploy.export import convert_form_file, export_onnx
from dyt_deploy.models import create_model
from dyt_deploy.runners import MissingBackendError, RunnerError, create_runner, runner_for_folder
from dyt_deploy.runners.openvino_runner import OpenVinoRunner, convert_onnx_to_ir, cpu_capabilities

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """A depth-1 DyT ViT with random gamma/beta, its model.pt, and its ONNX file in each form."""
    root = tmp_path_factory.mktemp("openvino")
    model = create_model("vit_tiny", norm="dyt", depth=1, img_size=32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 0.2)
    path = save_checkpoint(model, root / "model.pt")
    files = {"pattern": export_onnx(path, root / "pattern.onnx").onnx_path,
             "folded": export_onnx(path, root / "folded.onnx", fold=True).onnx_path}
    files["function"] = convert_form_file(files["pattern"], root / "function.onnx", "function").output
    files["plugin"] = convert_form_file(files["pattern"], root / "plugin.onnx", "plugin", check=False).output
    return model, files


def _feed(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    return {"pixel_values": np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)}


def _reference(model, feed):
    with torch.no_grad():
        return model(torch.from_numpy(feed["pixel_values"])).numpy()


@pytest.mark.parametrize("form", ["pattern", "function", "folded"])
def test_each_form_matches_pytorch(forms, form):
    model, files = forms
    with create_runner("openvino", files[form], threads=1) as runner:
        for feed in (_feed(2, 0), _feed(3, 1)):
            got = runner.infer(feed)
            assert list(got) == ["logits"]
            np.testing.assert_allclose(got["logits"], _reference(model, feed), atol=1e-4, rtol=1e-3, err_msg=form)


def test_plugin_form_is_refused_with_the_way_out(forms):
    _, files = forms
    with pytest.raises(RunnerError, match=r"plugin form.*dyt-form FILE --to pattern"):
        OpenVinoRunner(files["plugin"]).activate()


def test_ir_keeps_fp32_weights_and_the_onnx_names(forms, tmp_path):
    model, files = forms
    xml = convert_onnx_to_ir(files["function"], tmp_path / "1" / "model.xml")
    text = xml.read_text()
    assert (tmp_path / "1" / "model.bin").is_file()
    assert 'element_type="f16"' not in text and 'element_type="f32"' in text  # compress_to_fp16=False
    feed = _feed(2, 5)
    with OpenVinoRunner(xml) as runner:
        got = runner.infer(feed)
    assert list(got) == ["logits"]
    np.testing.assert_allclose(got["logits"], _reference(model, feed), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs_where_the_cpu_has_it(forms, precision):
    import openvino

    model, files = forms
    runner = OpenVinoRunner(files["pattern"], precision=precision)
    if precision.upper() not in cpu_capabilities(openvino.Core()):
        with pytest.raises(MissingBackendError, match=f"no {precision} support"):
            runner.activate()
        return
    feed = _feed(2, 2)
    with runner:
        got = runner.infer(feed)["logits"]
    expected = _reference(model, feed)
    assert not np.array_equal(got, expected)
    np.testing.assert_allclose(got, expected, atol=0.1, rtol=0.1)


def test_unknown_options_are_refused(forms):
    _, files = forms
    with pytest.raises(RunnerError, match="known: latency, throughput"):
        OpenVinoRunner(files["pattern"], hint="fast")
    with pytest.raises(RunnerError, match="known: fp32, bf16, fp16"):
        OpenVinoRunner(files["pattern"], precision="int4")
    with pytest.raises(RunnerError, match="no such model file"):
        OpenVinoRunner(files["pattern"].with_name("gone.onnx")).activate()


def test_missing_openvino_names_the_package(forms):
    _, files = forms
    code = ("import sys; sys.modules['openvino'] = None\n"  # makes `import openvino` fail, as if missing
            "from dyt_deploy.runners import MissingBackendError, create_runner\n"
            "try:\n"
            f"    create_runner('openvino', {str(files['pattern'])!r}).activate()\n"
            "except MissingBackendError as err:\n"
            "    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "openvino is not installed: pip install openvino", result.stderr


def test_runner_for_folder_picks_the_backend(forms, tmp_path):
    _, files = forms
    onnx_folder, ir_folder = tmp_path / "onnx", tmp_path / "ir"
    (onnx_folder / "1").mkdir(parents=True)
    (onnx_folder / "1" / "model.onnx").write_bytes(files["pattern"].read_bytes())
    convert_onnx_to_ir(files["pattern"], ir_folder / "1" / "model.xml")
    assert runner_for_folder(onnx_folder).name == "ort"
    assert runner_for_folder(onnx_folder, backend="openvino", spin=False, threads=1).name == "openvino"
    assert runner_for_folder(ir_folder, backend="onnxruntime").name == "openvino"  # an IR runs on OpenVINO only
    with pytest.raises(UnknownNameError, match="known: onnxruntime, openvino"):
        runner_for_folder(onnx_folder, backend="tvm")


def test_dyt_check_takes_the_openvino_runner(forms, tmp_path):
    """dyt-check --runners openvino, on a model.pt (exported on the fly) and on a model folder."""
    model, files = forms
    reports = check_model(files["pattern"].with_name("model.pt"), runners=["openvino"], samples=2)
    assert reports["openvino"].passed and reports["openvino"].outputs["logits"].max_abs < 1e-4
    folder = export_onnx(files["pattern"].with_name("model.pt"), repository=tmp_path / "repo", name="vit").model_dir
    result = CliRunner().invoke(check_app, [str(folder), "--runners", "openvino,ort"])
    assert result.exit_code == 0, result.output
    assert "PASSED openvino vs PyTorch" in result.output and "PASSED ort vs PyTorch" in result.output
