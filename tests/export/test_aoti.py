"""AOTInductor packages: ``dyt-build --backend aoti``, the ``aoti`` runner, ``runner_for_folder`` and
``dyt-check`` on one package the session compiles once (tests/aoti_testlib.py); the option checks
and failures before any compile."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from aoti_testlib import NAME, TINY_VIT, BuiltFolder, images, shared_folder, tiny_model
from typer.testing import CliRunner

from dyt_deploy.build_cli import build_app
from dyt_deploy.check import check_model
from dyt_deploy.cli import check_app
from dyt_deploy.errors import DytDeployError, OptionError
from dyt_deploy.export.aoti import AotiConfig, build_aoti, module_for
from dyt_deploy.repository import sha256_file
from dyt_deploy.runners import RunnerError, create_runner, runner_for_folder
from dyt_deploy.runners.aoti_runner import AotiRunner, package_metadata, probe_in_child

cli = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltFolder:
    return shared_folder(tmp_path_factory)


def flat(text: str) -> str:
    return " ".join(text.split())


# ---- the build ----


def test_dyt_build_writes_a_verified_folder(built: BuiltFolder) -> None:
    assert built.exit_code == 0, built.output
    output = flat(built.output)
    assert "PASSED AOTInductor package (cpu, fp32) vs PyTorch" in output
    assert f"dynamic dims: batch; wrote {built.folder} (1/model.pt2, dyt.json)" in output
    assert sorted(p.name for p in built.repository.iterdir()) == [NAME]  # no staging folder left
    assert sorted(p.name for p in built.folder.iterdir()) == ["1", "dyt.json"]  # no config.pbtxt: Triton has none
    assert [p.name for p in (built.folder / "1").iterdir()] == ["model.pt2"]


def test_manifest_records_the_package(built: BuiltFolder) -> None:
    manifest = json.loads((built.folder / "dyt.json").read_text())
    assert (manifest["backend"], manifest["device"], manifest["dtype"], manifest["norm"]) == ("aoti", "cpu", "fp32",
                                                                                              "dyt")
    assert manifest["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    assert manifest["dynamic"] == ["batch"]
    assert manifest["parity"]["passed"] and [s["pixel_values"][0] for s in manifest["parity"]["shapes"]] == [2, 3, 1]
    assert manifest["artifacts"] == {"1/model.pt2": sha256_file(built.package)}
    assert manifest["target"]["AOTI_DEVICE_KEY"] == "cpu" and "torch" in manifest["versions"]
    assert manifest["source"]["sha256"] == sha256_file(built.model_path)


def test_package_carries_its_signature(built: BuiltFolder) -> None:
    metadata = package_metadata(built.package)
    assert json.loads(metadata["dyt_deploy.inputs"])[0]["name"] == "pixel_values"
    assert metadata["dyt_deploy.dtype"] == "fp32" and metadata["AOTI_DEVICE_KEY"] == "cpu"


def test_existing_folder_is_refused_before_loading(built: BuiltFolder) -> None:
    before = sha256_file(built.package)
    result = cli.invoke(build_app, [str(built.model_path), "--backend", "aoti", "--repository",
                                    str(built.repository), "--name", NAME])
    assert result.exit_code == 2 and "exists; pass --force to replace it" in flat(result.output)
    assert sha256_file(built.package) == before


# ---- the runner ----


@pytest.mark.parametrize("batch", [1, 5, 12])
def test_runner_matches_eager_pytorch_at_any_batch(built: BuiltFolder, batch: int) -> None:
    x = images(batch, seed=batch)
    with torch.no_grad():
        expected = tiny_model()(torch.from_numpy(x)).numpy()
    with create_runner("aoti", built.package) as runner:
        got = runner.infer({"pixel_values": x})
        assert runner.input_names == ["pixel_values"] and runner.output_names == ["logits"]
        assert runner.last_inference_time is not None and runner.last_inference_time > 0
    assert got["logits"].dtype == np.float32 and got["logits"].shape == (batch, 10)
    np.testing.assert_allclose(got["logits"], expected, rtol=1e-4, atol=1e-5)


def test_runner_for_folder_picks_the_package(built: BuiltFolder) -> None:
    runner = runner_for_folder(built.folder, threads=1, spin=False)  # the options the service passes
    assert isinstance(runner, AotiRunner) and runner.threads == 1
    with runner:
        assert runner.infer({"pixel_values": images(2)})["logits"].shape == (2, 10)


def test_runner_takes_fp16_inputs_and_reports_bad_feeds(built: BuiltFolder) -> None:
    x = images(2)
    with create_runner("aoti", built.package) as runner:
        half = runner.infer({"pixel_values": x.astype(np.float16)})["logits"]
        np.testing.assert_allclose(half, runner.infer({"pixel_values": x})["logits"], atol=1e-2)
        with pytest.raises(RunnerError, match="feed lacks input"):
            runner.infer({"x": x})
    with pytest.raises(RunnerError, match="before infer"):
        runner.infer({"pixel_values": x})


def test_runner_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="no such AOTInductor package"):
        AotiRunner(tmp_path / "missing.pt2").activate()
    garbage = tmp_path / "model.pt2"
    garbage.write_bytes(b"not a package")
    with pytest.raises(RunnerError, match="cannot load this AOTInductor package") as caught:
        AotiRunner(garbage).activate()
    assert "\n" not in str(caught.value)
    with pytest.raises(RunnerError, match="threads must be"):
        AotiRunner(garbage, threads=-1)


def test_a_failing_child_probe_is_one_error_line(tmp_path: Path) -> None:
    """CUDA packages are first loaded and run in a child process (a crashing loader takes the child
    down, not the caller); what the child says comes back as the error."""
    with pytest.raises(RunnerError, match="failed in a child process: RunnerError: .*no such AOTInductor package"):
        probe_in_child(tmp_path / "absent.pt2")


@pytest.mark.slow  # a child process that imports torch and Inductor: ~10 s here
def test_the_child_probe_runs_the_package(built: BuiltFolder) -> None:
    with AotiRunner(built.package, probe=True) as runner:
        assert runner.infer({"pixel_values": images(1)})["logits"].shape == (1, 10)


# ---- dyt-check ----


def test_dyt_check_checks_the_folders_package(built: BuiltFolder) -> None:
    reports = check_model(built.folder, samples=2)
    assert list(reports) == ["aoti"] and reports["aoti"].passed
    result = cli.invoke(check_app, [str(built.folder), "--samples", "1"])
    assert result.exit_code == 0 and "PASSED aoti vs PyTorch" in result.output


def test_dyt_check_runs_onnx_runners_on_a_fresh_export_of_the_source(built: BuiltFolder) -> None:
    reports = check_model(built.folder, ["ort", "aoti"], samples=1)
    assert all(r.passed for r in reports.values())


# ---- options and failures before any compile ----


@pytest.mark.parametrize("args, fragment", [
    (["--backend", "tvm"], "unknown --backend 'tvm'; choose one of tensorrt, aoti"),
    (["--backend", "aoti", "--profile", "x=1x8:1x8:1x8"], "--profile is for --backend tensorrt, not aoti"),
    (["--device", "cuda"], "--device is for --backend aoti, not tensorrt"),
    (["--backend", "aoti", "--dtype", "fp8", "--samples", "0"], "--dtype: unknown dtype 'fp8'"),
    (["--backend", "aoti", "--samples", "0"], "--samples: verification needs at least 1 sample"),
])
def test_option_errors_are_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = cli.invoke(build_app, [str(tmp_path / "model.pt"), *args])
    assert result.exit_code == 2 and fragment in flat(result.output), result.output
    assert flat(result.output).count("error:") == 1 and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a host without CUDA")
def test_cuda_without_a_gpu_stops_before_loading(tmp_path: Path) -> None:
    result = cli.invoke(build_app, [str(tmp_path / "absent.pt"), "--backend", "aoti", "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device is visible" in flat(result.output)


def test_config_collects_every_problem() -> None:
    with pytest.raises(OptionError) as caught:
        AotiConfig(device="tpu", dtype="int8", samples=0, atol=-1, name="a/b")
    assert [field for field, _ in caught.value.problems] == ["device", "dtype", "samples", "atol", "name"]


def test_low_precision_module_is_a_copy_with_fp32_norms() -> None:
    from dyt_deploy.export.steps import Fp32Norm
    from dyt_deploy.models import create_model

    model = create_model("vit_tiny", norm="layernorm", **TINY_VIT)
    assert module_for(model, "fp32") is model
    low = module_for(model, "bf16")
    assert isinstance(low.norm, Fp32Norm) and low.norm.norm.weight.dtype == torch.float32
    assert low.head.weight.dtype == torch.bfloat16
    assert model.head.weight.dtype == torch.float32 and not isinstance(model.norm, Fp32Norm)


class _Square(torch.nn.Module):
    """A whole pickled module outside the zoo: its inputs come from --input-shape."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_a_model_export_cannot_capture_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(_Square(), path, pickle_module=pickle)
    repo = tmp_path / "repo"
    with pytest.raises(DytDeployError, match="torch.export could not capture the model on inputs x=") as caught:
        build_aoti(path, config=AotiConfig(trust_pickle=True, input_shapes=("x=2,5",), repository=repo))
    assert "\n" not in str(caught.value)
    assert not repo.exists()
