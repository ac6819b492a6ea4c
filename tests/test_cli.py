"""The dyt-zoo command line, and the lazy top-level package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from dyt_deploy.checkpoint import load_checkpoint
from dyt_deploy.cli import zoo_app
from dyt_deploy.models import list_models
from dyt_deploy.nn import DynamicTanh

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def flat(text: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_create_writes_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "vit" / "model.pt"
    result = runner.invoke(zoo_app, ["create", "vit_tiny", "-o", str(out), "--norm", "dyt"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    loaded = load_checkpoint(out)
    assert loaded.arch == "vit_tiny"
    assert loaded.norm == "dyt"
    assert sum(isinstance(m, DynamicTanh) for m in loaded.model.modules()) == 2 * 12 + 1


def test_create_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    result = runner.invoke(zoo_app, ["create", "vit_tiny", "-o", str(out), "--norm", "dyt"])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "--force" in flat(result.output)
    assert "Traceback" not in result.output
    assert out.read_bytes() == b"precious"


def test_create_with_force_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"old")
    result = runner.invoke(zoo_app, ["create", "bert_tiny", "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(out)
    assert (loaded.arch, loaded.norm) == ("bert_tiny", "layernorm")


def test_create_unknown_arch_lists_the_zoo(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    result = runner.invoke(zoo_app, ["create", "resnet50", "-o", str(out)])
    assert result.exit_code == 2
    assert "error:" in result.output
    text = flat(result.output)
    assert "resnet50" in text
    for name in list_models():
        assert name in text
    assert not out.exists()


def test_create_unknown_norm(tmp_path: Path) -> None:
    result = runner.invoke(zoo_app, ["create", "vit_tiny", "-o", str(tmp_path / "m.pt"), "--norm", "groupnorm"])
    assert result.exit_code == 2
    assert "error:" in result.output and "groupnorm" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_import_is_lazy() -> None:
    code = "\n".join([
        "import sys",
        "import dyt_deploy",
        "assert 'torch' not in sys.modules, 'import dyt_deploy imported torch'",
        "assert dyt_deploy.__version__",
        "model = dyt_deploy.create_model('vit_tiny', depth=1, img_size=32)",
        "assert 'torch' in sys.modules",
        "print(type(model).__name__, model.arch)",
        "try:",
        "    dyt_deploy.no_such_name",
        "except AttributeError:",
        "    print('attribute error')",
        "for name in ('DynamicTanh', 'Derf', 'create_norm', 'convert_norms', 'list_models',",
        "             'save_checkpoint', 'load_checkpoint', 'load_model', 'CheckpointError'):",
        "    assert name in dyt_deploy.__all__, name",
        "    assert getattr(dyt_deploy, name).__name__ == name, name",
    ])
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["VisionTransformer vit_tiny", "attribute error"]
