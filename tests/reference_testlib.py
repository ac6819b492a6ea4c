"""The tiny reference twins, trained once per test session (tests of the reference, check and bench)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from dyt_deploy.reference import Reference, ensure_reference

_TRAINED: dict[str, Reference] = {}
_FOLDER = Path(tempfile.mkdtemp(prefix="dyt-reference-tests-"))
atexit.register(shutil.rmtree, _FOLDER, True)


def tiny_reference(task: str) -> Reference:
    """``task``'s twins at the tiny preset, one thread, seed 0: trained on first use, then shared."""
    if task not in _TRAINED:
        _TRAINED[task] = ensure_reference(task, _FOLDER / task, seed=0, preset="tiny", threads=1)
    return _TRAINED[task]
