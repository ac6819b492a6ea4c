"""``make demo`` with its defaults, to its end: the command the Makefile runs (read from ``make -n``),
run in a scratch folder so its ``demo-out/`` lands there. It must train or reuse the image twins, export
them, pass the service checks (every batch size it sends, as JSON and as binary tensors), then serve the
dashboard with the held-out digits until Ctrl-C, and stop cleanly on it. The only test that runs the
demo exactly as a new user does.

The image twins are the full preset's (the defaults), cached where ``make demo`` and ``make reference``
keep them: the checkout's ``reference/image`` (git-ignored), linked into the test's own ``REFERENCE_DIR``.
The first run on a fresh checkout trains them (minutes), every later run, and every ``make demo``, reuses
them while their card matches. The text twins, served by default only where ``REFERENCE_DIR/text`` holds
them, are left out here (the test's folder has none): the demo must then say how to add them."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 1500  # a fresh checkout trains the twins first


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shared_reference(folder: Path) -> Path:
    """``folder``/image, a link to the checkout's reference/image (make demo's cache of the image twins)."""
    (ROOT / "reference" / "image").mkdir(parents=True, exist_ok=True)
    folder.mkdir()
    (folder / "image").symlink_to(ROOT / "reference" / "image", target_is_directory=True)
    return folder


def demo_command(port: int, reference: Path) -> list[str]:
    """The recipe line of ``make demo PORT=port REFERENCE_DIR=reference`` (STAMP=Makefile: without the
    install step)."""
    done = subprocess.run(["make", "-n", "-s", "demo", f"PORT={port}", "STAMP=Makefile",
                           f"REFERENCE_DIR={reference}"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in done.stdout.splitlines() if "service.demo" in ln)
    command = shlex.split(line)
    command[0] = str(ROOT / command[0])  # the venv's python: a symlink, kept as is (resolving it leaves the venv)
    return command


def wait_for_dashboard(process: subprocess.Popen, log: Path, url: str) -> str:
    """The demo's output once its dashboard answers; fails with the output when it exits first."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make demo exited with {process.returncode} before serving:\n{log.read_text()[-4000:]}")
        if "Dashboard:" in log.read_text():
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    return log.read_text()
            except httpx.TransportError:
                pass
        time.sleep(1)
    pytest.fail(f"make demo did not serve within {STARTUP_S} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_make_demo_runs_to_its_end_with_its_defaults(tmp_path: Path) -> None:
    port = free_port()
    reference = shared_reference(tmp_path / "reference")
    command = demo_command(port, reference)
    assert not {"--out", "--no-serve", "--preset", "--text"} & set(command)  # the defaults, as a user runs it
    log = tmp_path / "demo.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        try:
            output = wait_for_dashboard(process, log, url)
            assert "service checks: PASSED" in output and "Traceback" not in output
            assert f"Image twins (full preset) in {reference / 'image'}/: " in output
            assert "make demo TEXT=1 trains and serves them" in output
            assert f"--runners ort,torch --data {reference / 'image' / 'test.npz'}\n" in output  # the check hint
            assert "  dyt: " in output and "  layernorm: " in output and "test top-1" in output
            page = httpx.get(f"{url}/", timeout=30)
            assert page.status_code == 200 and "<html" in page.text.lower()
            models = {m["name"] for m in httpx.post(f"{url}/v2/repository/index", timeout=30).json()}
            assert {"digits-layernorm", "digits-dyt", "digits-dyt-folded"} <= models
            assert_digits_are_served(url)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, log.read_text()[-4000:]
    assert (tmp_path / "demo-out" / "repo" / "digits-dyt" / "1" / "model.onnx").is_file()


def assert_digits_are_served(url: str) -> None:
    """One held-out digit per class, each predicted by the three image models; the trained twins get most right."""
    (family,) = [f for f in httpx.get(f"{url}/api/examples", timeout=60).json()["families"]
                 if f["family"] == "digits_vit"]
    labels = [e["label"] for e in family["examples"]]
    assert labels == list(range(10)) and len(family["variants"]) == 3
    for variant in family["variants"]:
        right = sum(p["label"] == label for p, label in zip(variant["predictions"], labels, strict=True))
        assert right >= 7, (variant["model"], variant["predictions"])  # chance: 1 of 10
