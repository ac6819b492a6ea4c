"""The first hour: the DyT sites of a pattern-form export are reported (not "none"), the demo's
hint command works as printed without an active virtual environment, ``make demo PORT=`` chooses the
port, ``REFERENCE_DIR=`` the twins' cache and ``TEXT=1`` adds the text twins; the demo copies one
held-out sample per class beside each model."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.cli import export_app
from dyt_deploy.export import export_onnx
from dyt_deploy.models import create_model
from dyt_deploy.reference import ensure_reference
from service.demo.run import EXAMPLES_FILE, command_line, dyt_sites, reference_ready, write_examples

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    return {norm: save_checkpoint(create_model("vit_tiny", norm=norm, depth=2, img_size=32), root / f"{norm}.pt")
            for norm in ("dyt", "layernorm")}


def test_pattern_form_sites_are_counted_like_the_function_form(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    pattern = export_onnx(checkpoints["dyt"], tmp_path / "p.onnx", form="pattern", verify=False)
    function = export_onnx(checkpoints["dyt"], tmp_path / "f.onnx", form="function", verify=False)
    sites = dyt_sites(pattern.onnx_path, pattern.form, pattern.form_counts)
    assert sites == dict(function.form_counts) and sum(sites.values()) == 5  # 2 blocks x 2 norms + the final one
    layernorm = export_onnx(checkpoints["layernorm"], tmp_path / "ln.onnx", form="pattern", verify=False)
    assert dyt_sites(layernorm.onnx_path, layernorm.form, layernorm.form_counts) == {}


def test_dyt_export_prints_the_pattern_sites(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(export_app, [str(checkpoints["dyt"]), "-o", str(tmp_path / "m.onnx"), "--no-verify"])
    assert result.exit_code == 0, result.output
    assert "form: pattern (DyT sites: 5 full)" in result.output


def test_the_hint_command_runs_as_printed_without_the_venv_on_path() -> None:
    hint = command_line("dyt-check", "--help")
    bare = {**os.environ, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(shlex.split(hint), capture_output=True, text=True, env=bare, cwd="/", timeout=120)
    assert done.returncode == 0 and "Usage" in done.stdout, (hint, done.stderr)


def test_make_demo_takes_a_port() -> None:
    done = subprocess.run(["make", "-n", "demo", "PORT=8123", "STAMP=Makefile"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert "-m service.demo --port 8123" in done.stdout


def test_make_demo_caches_the_twins_in_the_reference_folder_and_text_adds_the_text_twins() -> None:
    def recipe(*extra: str) -> str:
        return subprocess.run(["make", "-n", "-s", "demo", "STAMP=Makefile", *extra], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout

    assert "--reference reference" in recipe() and "--text" not in recipe()
    assert "--reference /tmp/twins --text" in recipe("REFERENCE_DIR=/tmp/twins", "TEXT=1")


def test_one_held_out_sample_per_class_is_copied_beside_each_model(tmp_path: Path) -> None:
    labels = np.array([3, 1, 1, 0, 3, 2, 0])
    pixels = np.arange(7 * 4, dtype=np.float32).reshape(7, 1, 2, 2)
    np.savez(tmp_path / "test.npz", pixel_values=pixels, labels=labels)
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
    assert write_examples(tmp_path / "test.npz", folders) == 4
    for folder in folders:
        with np.load(folder / EXAMPLES_FILE) as copied:
            assert copied["labels"].tolist() == [0, 1, 2, 3]
            assert np.array_equal(copied["pixel_values"], pixels[[3, 1, 5, 0]])


def test_text_twins_are_served_only_when_their_folder_would_be_reused(tmp_path: Path) -> None:
    assert not reference_ready("text", tmp_path / "text", "tiny")
    made = ensure_reference("text", tmp_path / "text", preset="tiny", threads=2, steps=2, warmup_steps=1)
    assert made.trained and not reference_ready("text", tmp_path / "text", "tiny")  # another recipe than the demo's
