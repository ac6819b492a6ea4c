"""Bad inputs give one clear error (API: a DytDeployError; CLI: exit 2 and an "error:" line) and write nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dyt_deploy.cli import export_app
from dyt_deploy.errors import CheckpointError, DytDeployError
from dyt_deploy.export import ExportError, VerificationFailed, export_onnx

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


def snapshot(root: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every path under ``root`` (hidden ones too) with the bytes and mtime of files."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path: Path, tiny_checkpoint) -> Path:
    """A folder holding model.pt (vit_tiny, DyT), state_dict.pt (its bare state_dict) and taken.onnx."""
    checkpoint = tiny_checkpoint("vit_tiny", "dyt")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    torch.save(state, tmp_path / "state_dict.pt")
    (tmp_path / "taken.onnx").write_bytes(b"an earlier export")
    old = 1_600_000_000_000_000_000
    os.utime(tmp_path / "taken.onnx", ns=(old, old))
    return tmp_path


# (API keyword arguments, CLI arguments, error type, what the message says); paths relative to workdir
CASES: dict[str, tuple[dict, list[str], type[Exception], str]] = {
    "missing model file": ({"model_path": "missing.pt"}, ["missing.pt"], CheckpointError, "no such file"),
    "bare state_dict without --arch": ({"model_path": "state_dict.pt"}, ["state_dict.pt"], CheckpointError,
                                       "pass --arch"),
    "wrong --arch for a bare state_dict": ({"model_path": "state_dict.pt", "arch": "bert_tiny"},
                                           ["state_dict.pt", "--arch", "bert_tiny"], CheckpointError,
                                           "does not fit architecture 'bert_tiny'"),
    "unknown --arch": ({"model_path": "state_dict.pt", "arch": "resnet50"}, ["state_dict.pt", "--arch", "resnet50"],
                       DytDeployError, "unknown architecture 'resnet50'"),
    "bad --input-shape": ({"input_shapes": ["pixel_values=2,three,32"]}, ["--input-shape", "pixel_values=2,three,32"],
                          DytDeployError, "bad --input-shape"),
    "bad --input-shape dtype": ({"input_shapes": ["x=1,3:complex"]}, ["--input-shape", "x=1,3:complex"],
                                DytDeployError, "dtype 'complex'"),
    "existing output without --force": ({"output": "taken.onnx"}, ["-o", "taken.onnx"], DytDeployError, "--force"),
    "unknown --form": ({"form": "graph"}, ["--form", "graph"], DytDeployError, "unknown form 'graph'"),
    "unknown --dtype": ({"dtype": "bf16"}, ["--dtype", "bf16"], DytDeployError, "unknown dtype 'bf16'"),
    "no samples": ({"samples": 0}, ["--samples", "0"], DytDeployError, "at least 1 sample"),
    "bad --dynamic": (None, ["--dynamic", "height"], DytDeployError, "bad --dynamic"),
}


def _absolute(workdir: Path, kwargs: dict) -> dict:
    kwargs = {"model_path": "model.pt", "output": "out.onnx", **kwargs}
    return {k: workdir / v if k in ("model_path", "output") else v for k, v in kwargs.items()}


@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if spec[0] is not None])
def test_api_error_is_clear_and_writes_nothing(workdir: Path, case: str) -> None:
    kwargs, _, error, message = CASES[case]
    before = snapshot(workdir)

    with pytest.raises(error) as caught:
        export_onnx(**_absolute(workdir, kwargs))

    assert isinstance(caught.value, DytDeployError)
    assert message in str(caught.value)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("case", list(CASES))
def test_cli_error_exits_2_with_one_line_and_writes_nothing(workdir: Path, case: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, args, _, message = CASES[case]
    monkeypatch.chdir(workdir)
    if not args or args[0].startswith("-"):
        args = ["model.pt", *args]
    if "-o" not in args:
        args += ["-o", "out.onnx"]
    before = snapshot(workdir)

    result = runner.invoke(export_app, args)

    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert message in flat(result.output)
    assert "Traceback" not in result.output
    assert snapshot(workdir) == before


def test_existing_output_is_replaced_with_force(workdir: Path) -> None:
    result = export_onnx(workdir / "model.pt", workdir / "taken.onnx", force=True, verify=False, dynamic=())
    assert result.parity is None
    assert (workdir / "taken.onnx").read_bytes() != b"an earlier export"
    assert sorted(p.name for p in workdir.iterdir()) == ["model.pt", "state_dict.pt", "taken.onnx"]


@pytest.fixture
def layernorm_checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint("vit_tiny", "layernorm")


def test_verification_failure_raises_and_writes_nothing(layernorm_checkpoint: Path) -> None:
    folder = layernorm_checkpoint.parent
    before = snapshot(folder)

    with pytest.raises(VerificationFailed) as caught:
        export_onnx(layernorm_checkpoint, folder / "model.onnx", dtype="fp16", atol=0.0, rtol=0.0, dynamic=())

    assert isinstance(caught.value, DytDeployError)
    parity = caught.value.result.parity
    assert parity is not None and not parity.passed
    assert (parity.atol, parity.rtol) == (0.0, 0.0)
    assert parity.outputs["logits"].max_abs > 0
    assert snapshot(folder) == before


def test_verification_failure_in_a_repository_leaves_no_model_folder(layernorm_checkpoint: Path) -> None:
    repo = layernorm_checkpoint.parent / "repo"
    repo.mkdir()

    with pytest.raises(VerificationFailed):
        export_onnx(layernorm_checkpoint, repository=repo, dtype="fp16", atol=0.0, rtol=0.0, dynamic=())

    assert list(repo.iterdir()) == []  # neither vit_tiny-layernorm/ nor a hidden staging folder


def test_cli_verification_failure_exits_1_with_a_failed_table(layernorm_checkpoint: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = layernorm_checkpoint.parent
    monkeypatch.chdir(folder)
    before = snapshot(folder)

    args = ["model.pt", "--dtype", "fp16", "--atol", "0", "--rtol", "0", "--dynamic", "none"]
    result = runner.invoke(export_app, args)

    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert "verdict" in text and "logits" in text and "FAIL" in text  # the parity table
    assert "FAILED" in text
    assert "error:" in text and "nothing written" in text
    assert "PASSED" not in text
    assert snapshot(folder) == before


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_model_that_torch_cannot_export_at_the_given_shape_is_an_export_error(tmp_path: Path) -> None:
    torch.save(_Linear(), tmp_path / "linear.pt")
    before = snapshot(tmp_path)

    with pytest.raises(ExportError, match=r"failed on example inputs x=\(2, 5\).*Check --input-shape"):
        export_onnx(tmp_path / "linear.pt", trust_pickle=True, input_shapes=["x=2,5"])
    cli = runner.invoke(export_app, [str(tmp_path / "linear.pt"), "--trust-pickle", "--input-shape", "x=2,5"])
    assert cli.exit_code == 2, cli.output
    assert "error:" in cli.output and "Traceback" not in cli.output

    assert snapshot(tmp_path) == before
