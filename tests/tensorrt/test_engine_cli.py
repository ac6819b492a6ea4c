"""The dyt-build command line (dyt_deploy.build_cli:build_app)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from engine_testlib import make_dyt_onnx, make_model_folder
from typer.testing import CliRunner

from dyt_deploy.build_cli import build_app
from dyt_deploy.tensorrt import build as eb
from dyt_deploy.tensorrt.manifest import HostFacts, read_engine_manifest

REPO = Path(__file__).resolve().parents[2]
cli = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_the_options() -> None:
    result = cli.invoke(build_app, ["--help"])
    assert result.exit_code == 0
    for option in ("--output", "--profile", "--timing-cache", "--workspace", "--opt-level"):
        assert option in result.output


def test_help_works_without_tensorrt_or_torch() -> None:
    code = ("import sys; sys.modules['tensorrt'] = None\n"
            "from dyt_deploy.build_cli import build_app\n"
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, sorted(sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_without_tensorrt_one_line_and_exit_2(tmp_path: Path, no_tensorrt: None) -> None:
    folder = make_model_folder(tmp_path / "repo")
    result = cli.invoke(build_app, [str(folder)])
    assert result.exit_code == 2
    output = flat(result.output)
    assert output.startswith("error: TensorRT is not installed: pip install 'dyt-deploy[tensorrt]'")
    assert output.count("error:") == 1 and "Traceback" not in result.output


def test_no_gpu_one_line_and_exit_2(tmp_path: Path, fake_trt) -> None:
    fake_trt.no_gpu = True
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    result = cli.invoke(build_app, [str(path), "-o", str(tmp_path / "m.plan")])
    assert result.exit_code == 2
    assert "error:" in result.output and "no usable CUDA device" in flat(result.output)


@pytest.mark.parametrize("args, fragment", [
    (["--profile", "x=1x8"], "expected NAME=min:opt:max"),
    (["--profile", "y=1x1x8:1x1x8:1x1x8"], "'y', which is not an input"),
    (["--opt-level", "7"], "--opt-level must be 0..5"),
    (["--workspace", "0"], "--workspace must be a positive number"),
])
def test_bad_options_are_one_line_errors(tmp_path: Path, no_tensorrt: None, args: list[str], fragment: str) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    result = cli.invoke(build_app, [str(path), *args])
    assert result.exit_code == 2
    assert "error:" in result.output and fragment in flat(result.output) and "Traceback" not in result.output


def test_missing_source(tmp_path: Path) -> None:
    result = cli.invoke(build_app, [str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in flat(result.output)


def test_builds_with_tensorrt(tmp_path: Path, fake_trt, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eb, "gather_host_facts", lambda: HostFacts("10.13.0.35", "NVIDIA L4", "8.9", "12.8"))
    folder = make_model_folder(tmp_path / "repo", form="plugin", overloads=["", "tanh_only"])
    result = cli.invoke(build_app, [str(folder), "--profile", "x=1x1x8:2x16x8:4x64x8", "--opt-level", "2"])
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert "note: 2 DynamicTanh nodes run as the dyt_deploy plugin" in output
    assert "TensorRT 10.13.0.35 on NVIDIA L4 (compute 8.9), precision fp32, profile: x [1, 1, 8]..[4, 64, 8]" in output
    assert f"wrote {folder / '1' / 'model.plan'} and model.plan.json" in output
    manifest = read_engine_manifest(folder / "1" / "model.plan")
    assert manifest.build["command"][-4:] == ["--profile", "x=1x1x8:2x16x8:4x64x8", "--opt-level", "2"]


def test_bracketed_text_survives_in_error_messages(tmp_path: Path, no_tensorrt: None) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, shape=["batch", "tokens", 8])
    result = cli.invoke(build_app, [str(path)])
    assert result.exit_code == 2
    assert "x: shape [batch, tokens, 8] has dims with no default range" in flat(result.output)
