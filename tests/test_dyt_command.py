"""The one `dyt` command: every tool as a subcommand, one error handler, option errors named by flag."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyt_deploy.bench.config import BenchConfig
from dyt_deploy.cli import app
from dyt_deploy.cli_common import error_text, flag_of
from dyt_deploy.errors import DytDeployError, OptionError
from dyt_deploy.export import ExportConfig

runner = CliRunner()
SUBCOMMANDS = ("export", "form", "check", "bench", "build", "serve", "zoo", "generate", "train-reference", "quantize")


def flat(text: str) -> str:
    return " ".join(text.split())


def test_dyt_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1]
    assert {line.split()[0] for line in listed.splitlines() if line.strip()} == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", ["export", "form", "check", "bench", "build", "generate"])
def test_each_subcommand_has_its_own_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--" in result.output


def test_dyt_serve_takes_dyt_serve_options() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "--repository" in result.output and "--max-in-flight" in result.output


def test_dyt_zoo_create_writes_a_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["zoo", "create", "vit_tiny", "-o", str(tmp_path / "m.pt"), "--norm", "dyt"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.pt").is_file()


def test_every_bad_option_is_reported_at_once_by_its_flag(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path / "m.pt"), "--form", "graph", "--samples", "0",
                                 "--input-shape", "x=1,2"])
    assert result.exit_code == 2
    text = flat(result.output)
    assert text.count("error:") == 1 and "Traceback" not in text
    assert "--form: unknown form 'graph'" in text
    assert "--samples: verification needs at least 1 sample" in text


def test_bench_options_are_checked_before_any_work(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--variants", "dyt,batchnorm", "--batch", "0", "--baseline", "layernorm",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "--variants: unknown variant 'batchnorm'" in text
    assert "--batch: batches must be positive" in text
    assert "--baseline: baseline 'layernorm' is not among the variants dyt, batchnorm" in text
    assert not (tmp_path / "out").exists()


def test_library_errors_name_fields_not_flags() -> None:
    with pytest.raises(OptionError) as caught:
        ExportConfig(dtype="int8", opset=13, atol=-1.0)
    assert [field for field, _ in caught.value.problems] == ["dtype", "opset", "atol"]
    assert "--" not in str(caught.value)
    assert isinstance(caught.value, DytDeployError)
    assert error_text(caught.value).startswith("--dtype: ")


@pytest.mark.parametrize("field,flag", [("input_shapes", "--input-shape"), ("batches", "--batch"),
                                        ("seqs", "--seq"), ("overrides", "--set"), ("trust_pickle", "--trust-pickle")])
def test_fields_map_to_their_flags(field: str, flag: str) -> None:
    assert flag_of(field) == flag


def test_export_config_normalises_sequences_and_paths(tmp_path: Path) -> None:
    config = ExportConfig(input_shapes=["x=1,2"], dynamic=["batch"], repository=str(tmp_path))
    assert config.input_shapes == ("x=1,2",) and config.dynamic == ("batch",)
    assert config.repository == tmp_path
    assert ExportConfig(input_shapes=[]).input_shapes is None
    with pytest.raises(OptionError, match="dynamic: unknown dynamic dims height"):
        ExportConfig(dynamic=("batch", "height"))
    with pytest.raises(OptionError, match="name: model folder name '../x'"):
        ExportConfig(name="../x")


@pytest.mark.parametrize("kwargs,field", [({"runners": ("ort", "tensorrt")}, "runners"),
                                          ({"optimizers": ("o3",)}, "optimizers"), ({"iters": 0}, "iters"),
                                          ({"warmup": -1}, "warmup"), ({"threads": -2}, "threads"),
                                          ({"seqs": (0,)}, "seqs"), ({"variants": ()}, "variants")])
def test_bench_config_refuses_each_bad_field(kwargs: dict, field: str) -> None:
    with pytest.raises(OptionError) as caught:
        BenchConfig(**kwargs)
    assert field in [f for f, _ in caught.value.problems]


def test_bench_config_defaults_are_valid() -> None:
    config = BenchConfig(variants=["dyt", "layernorm"], batches=[1])
    assert config.variants == ("dyt", "layernorm") and config.batches == (1,)
    assert config.problems() == []
