"""The dyt-export command line: its help, and a real export that ends with PASSED."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
from typer.testing import CliRunner

from dyt_deploy.cli import export_app, form_app
from dyt_deploy.export import dyt_nodes
from dyt_deploy.repository import read_manifest

runner = CliRunner()
OPTIONS = ["--output", "--arch", "--form", "--opset", "--dynamic", "--input-shape", "--dtype", "--fold", "--atol",
           "--rtol", "--samples", "--verify", "--no-verify", "--repository", "--name", "--family", "--force",
           "--trust-pickle"]


def flat(text: str) -> str:
    return " ".join(text.split())


def test_help_mentions_every_option(tmp_path: Path) -> None:
    result = runner.invoke(export_app, [str(tmp_path / "model.pt"), "--help"])

    assert result.exit_code == 0, result.output
    text = flat(result.output)
    for option in OPTIONS:
        assert option in text, option
    for form in ("pattern", "function", "plugin"):
        assert form in text
    assert not (tmp_path / "model.pt").exists() and list(tmp_path.iterdir()) == []


def help_text(app, args: list[str]) -> str:
    """--help output as one line: rich's table borders and line wrapping undone."""
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return flat(result.output.replace("\u2502", " "))


def test_help_shows_the_bracketed_defaults() -> None:
    # rich markup would swallow an unescaped "[default: ...]" as a style tag
    text = help_text(export_app, ["model.pt"])
    for default in ("[default: MODEL with .onnx]", "[default: 1e-4 fp32, 2e-2 fp16]", "[default: 1e-3 fp32, 2e-2 fp16]",
                    "[default: ARCH-NORM]", "[default: ARCH]", "[default: pattern]", "[default: fp32]"):
        assert default in text, default
    assert "[default: SOURCE, needs --force]" in help_text(form_app, ["model.onnx"])


def test_missing_model_argument_is_a_usage_error() -> None:
    result = runner.invoke(export_app, [])
    assert result.exit_code == 2
    assert "Missing argument" in flat(result.output)


def test_cli_export_prints_passed_and_writes_the_model(tiny_checkpoint, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint("vit_tiny", "dyt", random_affine=True)
    repo = tmp_path / "repo"

    result = runner.invoke(export_app, [str(checkpoint), "--form", "function", "--fold", "--repository", str(repo),
                                        "--name", "vit-dyt"])

    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "PASSED" in text and "FAILED" not in text
    assert "form: function (DyT sites: 2 tanh_only, 1 full)" in text
    assert "folded: 2 DyT into 2 linear layers, 1 left" in text
    assert "logits" in text  # the parity table names each output
    assert f"wrote {repo / 'vit-dyt'}" in text
    model = ir.load(repo / "vit-dyt" / "1" / "model.onnx")
    assert sorted(n.overload for n in dyt_nodes(model)) == ["", "tanh_only", "tanh_only"]
    manifest = read_manifest(repo / "vit-dyt")
    assert manifest["parity"]["passed"] is True
    assert manifest["folded"]["folded"] == 2


def test_cli_export_defaults_to_the_model_path_with_onnx_suffix(tiny_checkpoint, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint("bert_tiny", "layernorm")

    result = runner.invoke(export_app, [str(checkpoint), "--no-verify", "--dynamic", "none"])

    assert result.exit_code == 0, result.output
    assert "not verified" in flat(result.output)
    written = checkpoint.with_suffix(".onnx")
    assert written.is_file()
    assert [list(v.shape) for v in ir.load(written).graph.inputs] == [[2, 16], [2, 16]]
