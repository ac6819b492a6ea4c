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
        assert f"left by process {killed.pid}, which is gone" in caplog.text and str(left) in caplog.text
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
    other = tmp_path / ".other.staging-{host}-999999999-bbbb"
    for path in (mine, old_style, other):
        path.mkdir()
    assert remove_stale_staging(final) == []
    assert mine.exists() and old_style.exists() and other.exists()
