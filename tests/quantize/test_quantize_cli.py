"""``dyt quantize`` and ``dyt-export --precision int8`` end to end on the tiny DyT twin."""

from __future__ import annotations

import json

import pytest
from reference_testlib import tiny_reference
from typer.testing import CliRunner

from dyt_deploy.cli import app, export_app

runner = CliRunner()


@pytest.fixture(scope="module")
def twins():
    return tiny_reference("image")


def flat(text: str) -> str:
    return " ".join(text.split())


def test_dyt_quantize_writes_int8_and_prints_what_was_quantized_how(twins, tmp_path) -> None:
    out = tmp_path / "dyt.int8.onnx"
    result = runner.invoke(app, ["quantize", str(twins.checkpoints["dyt"]), "-o", str(out), "--activations", "float"])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "linear inputs after dyt-folded: 4 static-fixed" in text
    assert "linear inputs after other: 4 float" in text
    assert "static scales from the DyT math: 0.007874 (no data needed)" in text
    assert "top-1 agreement" in text and "PASSED" in text and out.is_file()


def test_dyt_quantize_layernorm_float_fails_with_the_way_out(twins, tmp_path) -> None:
    out = tmp_path / "ln.int8.onnx"
    result = runner.invoke(app, ["quantize", str(twins.checkpoints["layernorm"]), "-o", str(out),
                                 "--activations", "float"])
    assert result.exit_code == 2
    assert "--calibration FILE.npz" in flat(result.output) and not out.exists()


def test_a_failed_verdict_exits_1_and_writes_nothing(twins, tmp_path) -> None:
    out = tmp_path / "dyt.int8.onnx"
    result = runner.invoke(app, ["quantize", str(twins.checkpoints["dyt"]), "-o", str(out), "--activations", "float",
                                 "--full-range-weights"])  # 8-bit weights: saturating sums on CPUs without VNNI
    if result.exit_code == 0:
        pytest.skip("this CPU has VNNI: full-range weights do not saturate, the verdict passes")
    assert result.exit_code == 1 and "nothing written" in flat(result.output) and "FAILED" in result.output
    assert not out.exists()


def test_dyt_export_precision_int8_writes_a_folder_beside_fp32(twins, tmp_path) -> None:
    repo = tmp_path / "repo"
    result = runner.invoke(export_app, [str(twins.checkpoints["dyt"]), "--precision", "int8", "--repository",
                                        str(repo), "--no-verify"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((repo / "vit_tiny-dyt-int8" / "dyt.json").read_text())
    assert manifest["precision"] == "int8" and manifest["family"] == "vit_tiny-int8"
    assert manifest["quantization"]["linear_inputs"] == {"dyt-folded": 4, "other": 4}
    assert (repo / "vit_tiny-dyt-int8" / "1" / "model.onnx").is_file()


def test_dyt_export_refuses_int8_options_without_int8(twins) -> None:
    result = runner.invoke(export_app, [str(twins.checkpoints["dyt"]), "--activations", "static"])
    assert result.exit_code == 2
    assert "--precision int8" in flat(result.output)
