"""A write killed half-way leaves its staging folder; the next write to that place removes it (with
a warning) once its owner process is gone, and leaves the staging folders of live processes and of
other hosts alone."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.cli import export_app
from dyt_deploy.models import create_model
from dyt_deploy.repository import remove_stale_staging, staged_folder

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dyt_deploy.repository import staged_folder
    with staged_folder(Path(sys.argv[1]), force=True) as stage:
        (stage / "model.onnx").write_bytes(b"partial" * 1000)
        print("writing", flush=True)
        time.sleep(120)
""")


def start_writer(final: Path) -> subprocess.Popen:
    """A process half-way through writing ``final`` (it waits inside the staging block)."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    return writer


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(ended.stdout)


def staging_siblings(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.staging-*"))


def test_a_killed_writers_staging_is_removed_by_the_next_write(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    final = tmp_path / "repo" / "model"
    killed = start_writer(final)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (left,) = staging_siblings(final)
    assert f"-{killed.pid}-" in left.name and (left / "model.onnx").stat().st_size == 7000
    live = start_writer(final)  # its write removes the dead one's staging too: made again below
    left.mkdir()
    try:
        foreign = final.parent / f".model.staging-{socket.gethostname()}x-{killed.pid}-abc123"
        foreign.mkdir()
        with caplog.at_level(logging.WARNING, "dyt_deploy.repository"), staged_folder(final, force=True) as stage:
            (stage / "model.onnx").write_bytes(b"complete")
        assert not left.exists() and (final / "model.onnx").read_bytes() == b"complete"
        assert f"removed stale staging folder {left} left by process {killed.pid}" in caplog.text
        kept = staging_siblings(final)
        assert foreign in kept and any(f"-{live.pid}-" in p.name for p in kept)  # another host's, a live one's
    finally:
        live.kill()
        live.wait()


def test_only_provably_dead_owners_count(tmp_path: Path) -> None:
    final = tmp_path / "model"
    host = socket.gethostname()
    mine = tmp_path / f".model.staging-{host}-{os.getpid()}-aaaa"
    old_style = tmp_path / ".model.staging-k3j2h1"  # named before owners were recorded: cannot tell
    other_host = tmp_path / f".other.staging-{host}x-{dead_pid()}-bbbb"
    for path in (mine, old_style, other_host):
        path.mkdir()
    assert remove_stale_staging(final.parent) == []
    assert mine.exists() and old_style.exists() and other_host.exists()


def test_a_write_removes_the_stale_staging_of_every_name_in_the_folder(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A killed export of one model leaves ``.a.staging-HOST-PID-*``; a write of model b cleans it."""
    pid, host = dead_pid(), socket.gethostname()
    stale = tmp_path / f".a.staging-{host}-{pid}-x1y2z3"
    (stale / "1").mkdir(parents=True)
    (stale / "1" / "model.onnx").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, "dyt_deploy.repository"), staged_folder(tmp_path / "b") as stage:
        (stage / "dyt.json").write_text("{}")
    assert not stale.exists() and (tmp_path / "b" / "dyt.json").is_file()
    assert f"removed stale staging folder {stale} left by process {pid}" in caplog.text


def test_a_killed_replacement_puts_the_previous_model_back(tmp_path: Path) -> None:
    """Killed between its two renames, a replacement leaves NAME missing and the previous model in
    ``.NAME.old-*/NAME``: the next write puts it back before removing the folder."""
    moved_aside = tmp_path / f".a.old-{socket.gethostname()}-{dead_pid()}-q9w8e7" / "a"
    moved_aside.mkdir(parents=True)
    (moved_aside / "dyt.json").write_text("previous")
    with staged_folder(tmp_path / "b") as stage:
        (stage / "dyt.json").write_text("{}")
    assert (tmp_path / "a" / "dyt.json").read_text() == "previous"
    assert not moved_aside.parent.exists()


def test_dyt_export_cleans_up_after_a_killed_writer_of_another_model_and_says_so(tmp_path: Path) -> None:
    """A process killed with SIGKILL half-way through writing repo/killed; dyt-export of repo/next
    removes its staging folder and prints the line that says so."""
    repository = tmp_path / "repo"
    killed = start_writer(repository / "killed")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (left,) = staging_siblings(repository / "killed")
    model = save_checkpoint(create_model("vit_tiny", norm="dyt", depth=1, dim=32, heads=2, img_size=16,
                                         patch_size=8, num_classes=10), tmp_path / "model.pt")
    result = CliRunner().invoke(export_app, [str(model), "--repository", str(repository), "--name", "next",
                                             "--no-verify"])
    assert result.exit_code == 0, result.output
    assert f"removed stale staging folder {left} left by process {killed.pid}" in " ".join(result.stderr.split())
    assert sorted(p.name for p in repository.iterdir()) == ["next"]
