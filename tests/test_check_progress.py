"""dyt-check shows each runner as it starts and ends, with its time, and names a slow runner with
the --runners value that leaves it out (a torch.compile check takes most of a minute on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyt_deploy.check import check_model
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.cli import _name_the_slow_runner, check_app
from dyt_deploy.models import create_model


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(create_model("vit_tiny", norm="dyt", depth=1, img_size=32),
                           tmp_path_factory.mktemp("progress") / "model.pt")


def test_check_model_reports_each_runner_with_its_time(model_pt: Path) -> None:
    events: list[tuple[str, str, float]] = []
    check_model(model_pt, ["torch", "ort"], samples=1, progress=lambda *event: events.append(event))
    assert [(e, step) for e, step, _ in events] == [("start", "runner torch"), ("done", "runner torch"),
                                                    ("start", "runner ort"), ("done", "runner ort")]
    assert all(seconds > 0 for event, _, seconds in events if event == "done")


def test_dyt_check_prints_progress_lines(model_pt: Path) -> None:
    result = CliRunner().invoke(check_app, [str(model_pt), "--runners", "torch,ort", "--samples", "1"])
    assert result.exit_code == 0, result.output
    assert "… runner torch" in result.output and "✓ runner ort (" in result.output
    assert result.output.index("✓ runner ort") < result.output.index("PASSED ort vs PyTorch")


def test_a_slow_runner_is_named_with_how_to_skip_it(capsys: pytest.CaptureFixture[str]) -> None:
    _name_the_slow_runner({"torch-compile": 48.2, "ort": 3.1})
    assert "slowest: torch-compile (48.2 s of 51.3 s); leave it out with --runners ort" in capsys.readouterr().err
    _name_the_slow_runner({"torch-compile": 4.0, "ort": 1.0})  # nothing slow: nothing said
    _name_the_slow_runner({"torch-compile": 50.0})  # one runner: nothing to leave out
    assert capsys.readouterr().err == ""
