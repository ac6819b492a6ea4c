"""The README's first hour, run as written: every shell block of its "The first hour" section, in
order, in one bash script in a scratch folder (with ``.venv`` linked there, so ``source
.venv/bin/activate`` works as in a checkout, and ``reference`` linked to the checkout's, the trained
twins ``make demo`` and the demo's test share: trained once, then reused). The only change is the
port: 8000 becomes a free one.
What each step must show is asserted on the output; tests/test_readme_commands.py parses the rest."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def first_hour_blocks(readme: str) -> list[str]:
    """The ```sh blocks between '## The first hour' and the next heading of any level."""
    section = readme.split("\n## The first hour\n", 1)[1]
    section = re.split(r"^#{2,3} ", section, maxsplit=1, flags=re.M)[0]
    return re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_first_hour_section_has_each_step() -> None:
    script = "\n".join(first_hour_blocks((ROOT / "README.md").read_text()))
    for tool in ("dyt train-reference", "dyt-export", "dyt-check", "dyt-bench", "dyt-serve", "curl", "dyt-generate"):
        assert tool in script, tool


@pytest.mark.slow
def test_the_first_hour_runs_as_written(tmp_path: Path) -> None:
    if not (VENV / "bin" / "activate").is_file():
        pytest.skip("the tests do not run inside a virtual environment, so `source .venv/bin/activate` cannot")
    (tmp_path / ".venv").symlink_to(VENV)
    (ROOT / "reference").mkdir(exist_ok=True)
    (tmp_path / "reference").symlink_to(ROOT / "reference")
    port = free_port()
    blocks = [block.replace(":8000", f":{port}").replace("--port 8000", f"--port {port}")
              for block in first_hour_blocks((ROOT / "README.md").read_text())]
    script = "set -euo pipefail\n" + "\n".join(f"echo '### block {i}'\n{block}" for i, block in enumerate(blocks))
    (tmp_path / "first-hour.sh").write_text(script)
    done = subprocess.run(["bash", "first-hour.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Traceback" not in output and "error:" not in output, output[-6000:]
    assert (tmp_path / "repo" / "digits-dyt" / "1" / "model.onnx").is_file()
    assert output.count("PASSED") >= 3, output[-6000:]  # the export, and dyt-check's ort and openvino
    accuracies = re.findall(r"accuracy (\d+\.\d+)% vs", output)
    assert len(accuracies) >= 2 and all(float(a) >= 97 for a in accuracies), output[-6000:]  # the trained twin
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert report["summary"], "the bench report has no answer"
    assert "vs layernorm" in (tmp_path / "bench" / "report.md").read_text().split("\n\n", 3)[1] + output
    metadata, _ = json.JSONDecoder().raw_decode(output[output.index('{"name"'):])  # curl prints no newline
    assert metadata["name"] == "digits-dyt" and metadata["inputs"][0]["name"] == "pixel_values"
    generated = output.split("### block 6", 1)[1]
    assert re.search(r"\[16 tokens, first after [\d.]+ ms", generated), generated  # -n 16, and its timing
