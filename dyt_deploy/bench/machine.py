"""The machine a benchmark ran on, as every report records it (the model and the generation benchmark)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info() -> dict:
    """The CPU's model name, the CPU count, the platform and the Python version, for a report."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
