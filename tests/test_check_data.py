"""``dyt-check MODEL --data FILE.npz`` on the tiny reference twins, with real runners."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference_testlib import tiny_reference
from typer.testing import CliRunner

from dyt_deploy.check_data import DataFigures, load_check_data, perplexity
from dyt_deploy.cli import check_app
from dyt_deploy.errors import DytDeployError
from dyt_deploy.specs import TensorSpec


def run_check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(check_app, list(args))
    return result.exit_code, result.output


def test_image_twin_on_its_test_set_per_runner_and_precision(tmp_path: Path) -> None:
    reference = tiny_reference("image")
    report = tmp_path / "check.json"
    code, output = run_check(str(reference.checkpoints["dyt"]), "--data", str(reference.test_data),
                             "--runners", "torch,ort,openvino,torch/fp16,torch/bf16", "--json", str(report))
    results = json.loads(report.read_text())
    assert set(results) == {"torch", "ort", "openvino", "torch/fp16", "torch/bf16"}
    bf16 = results.pop("torch/bf16")["data"]  # 8 mantissa bits may flip a near tie: the verdict follows the figures
    assert bf16["precision"] == "bf16" and bf16["threshold"] == 0.995 and bf16["agreement"] > 0.95
    assert bf16["passed"] == (bf16["agreement"] >= 0.995 and bf16["parity_passed"])
    assert code == (0 if bf16["passed"] else 1), output
    expected_top1 = reference.card["variants"]["dyt"]["test_top1"]
    for result in results.values():
        data = result["data"]
        assert data["samples"] == 360 and result["passed"] and data["agreement_passed"]
        assert data["reference_accuracy"] == pytest.approx(expected_top1)
        assert abs(data["accuracy"] - expected_top1) <= 1 - data["agreement"] + 1e-9
        assert data["greedy_agreement"] is None and data["perplexity"] is None
    assert results["torch"]["data"]["agreement"] == 1.0 and results["torch"]["data"]["max_abs"] == 0.0
    assert results["ort"]["data"]["threshold"] == 1.0 and results["ort"]["data"]["agreement"] == 1.0
    assert 0 < results["ort"]["data"]["max_abs"] < 1e-3
    assert results["torch/fp16"]["data"]["precision"] == "fp16"
    assert results["torch/fp16"]["data"]["threshold"] == 0.995
    assert 1e-4 < results["torch/fp16"]["data"]["max_abs"] < 0.1  # fp16 rounding shows, within its tolerance
    assert output.count("PASSED") >= 4 and "top-1 agreement 100.00% >= 100.00%" in output


def test_text_twin_reports_perplexity_and_greedy_agreement(tmp_path: Path) -> None:
    reference = tiny_reference("text")
    report = tmp_path / "check.json"
    code, output = run_check(str(reference.checkpoints["rmsnorm"]), "--data", str(reference.test_data),
                             "--runners", "ort,torch/bf16", "--prompts", "3", "--json", str(report))
    results = json.loads(report.read_text())
    ort, bf16 = results["ort"]["data"], results["torch/bf16"]["data"]
    assert ort["reference_perplexity"] == pytest.approx(reference.card["variants"]["rmsnorm"]["test_perplexity"],
                                                        rel=1e-4)
    assert abs(ort["perplexity_change"]) < 1e-3 and ort["greedy_agreement"] == 1.0
    assert (ort["prompts"], ort["new_tokens"]) == (3, 16)
    assert 0 < abs(bf16["perplexity_change"]) < 0.5 * ort["reference_perplexity"]
    assert bf16["threshold"] == 0.995 and bf16["passed"] == (bf16["agreement"] >= 0.995 and
                                                            results["torch/bf16"]["data"]["parity_passed"])
    assert code == (0 if all(r["passed"] for r in results.values()) else 1), output
    assert "perplexity change" in output


def test_an_agreement_floor_can_be_raised_or_lowered(tmp_path: Path) -> None:
    reference = tiny_reference("text")
    report = tmp_path / "check.json"
    code, output = run_check(str(reference.checkpoints["dyt"]), "--data", str(reference.test_data), "--runners",
                             "torch/bf16", "--agreement", "bf16=0.5", "--atol", "100", "--prompts", "0",
                             "--json", str(report))
    data = json.loads(report.read_text())["torch/bf16"]["data"]
    assert data["threshold"] == 0.5 and data["greedy_agreement"] is None
    assert code == 0 and data["passed"], output
    code, output = run_check(str(reference.checkpoints["dyt"]), "--data", str(reference.test_data), "--runners",
                             "torch", "--agreement", "fp32=2")
    assert code == 2 and "error: --agreement 'fp32=2'" in output


def test_agreement_below_the_floor_fails() -> None:
    figures = DataFigures("ort", "fp16", 100, agreement=0.99, threshold=0.995, max_abs=0.01)
    assert not figures.passed and figures.to_dict()["agreement_passed"] is False
    assert DataFigures("ort", "fp16", 100, agreement=0.995, threshold=0.995, max_abs=0.01).passed


def test_perplexity_of_uniform_logits_is_the_vocabulary() -> None:
    assert perplexity(np.zeros((2, 5, 256), np.float32), np.ones((2, 5), np.int64)) == pytest.approx(256)


SPECS = [TensorSpec("pixel_values", ("batch", 1, 8, 8))]


@pytest.mark.parametrize(("arrays", "problem"), [
    ({"x": np.zeros((4, 1, 8, 8), np.float32)}, "no array 'pixel_values' (it holds x)"),
    ({"pixel_values": np.zeros((4, 1, 16, 16), np.float32)},
     "pixel_values has shape (4, 1, 16, 16); the model takes (batch, 1, 8, 8)"),
    ({"pixel_values": np.zeros((4, 8, 8), np.float32)}, "pixel_values has shape (4, 8, 8)"),
    ({"pixel_values": np.zeros((4, 1, 8, 8), np.int64)}, "pixel_values has dtype int64; the model takes float32"),
    ({"pixel_values": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(4, np.float32)},
     "labels has dtype float32"),
    ({"pixel_values": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(3, np.int64)},
     "different sample counts (first dims: pixel_values 4, labels 3)"),
])
def test_bad_data_files_are_one_clear_error(tmp_path: Path, arrays: dict, problem: str) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    with pytest.raises(DytDeployError) as info:
        load_check_data(path, SPECS)
    assert problem in str(info.value) and str(info.value).startswith(f"{path}: bad data file: ")
    assert "\n" not in str(info.value)


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ids.npz"
    np.savez(path, input_ids=np.full((2, 4), 300, np.int64))
    with pytest.raises(DytDeployError, match=r"input_ids holds values in \[300, 300\]; the model takes \[0, 255\]"):
        load_check_data(path, [TensorSpec("input_ids", ("batch", "seq"), "int64", 0, 256)])


def test_a_file_that_is_no_npz_is_one_error_line(tmp_path: Path) -> None:
    reference = tiny_reference("image")
    bad = tmp_path / "data.npz"
    bad.write_text("not numpy")
    code, output = run_check(str(reference.checkpoints["dyt"]), "--data", str(bad), "--runners", "torch")
    assert code == 2 and output.strip().startswith(f"error: {bad}: not a readable .npz archive")
    code, output = run_check(str(reference.checkpoints["dyt"]), "--data", str(tmp_path / "none.npz"))
    assert code == 2 and "no such file" in output and "Traceback" not in output


def test_a_precision_on_an_onnx_runner_is_refused() -> None:
    reference = tiny_reference("image")
    code, output = run_check(str(reference.checkpoints["dyt"]), "--data", str(reference.test_data),
                             "--runners", "ort/fp16")
    assert code == 2 and "only the torch runners take a precision" in output
