"""Every backend behind one interface: ``Runner.activate() / infer(feed) / deactivate()``.

Runners are made in one place, :func:`create_runner` (and :func:`runner_for_folder` for a model
folder of a repository); the kinds are listed in ``RUNNERS`` (``runners/registry.py``). Backends
are imported when a runner is made.
"""

from ..errors import MissingBackendError
from .base import Runner, RunnerError, Timer
from .registry import (
    MODULE,
    ONNX,
    ONNX_BACKENDS,
    ORT_KIND_BY_PROVIDER,
    PLAN,
    RUNNER_KINDS,
    RUNNERS,
    RunnerKind,
    create_runner,
    runner_for_folder,
    runner_kind,
)

__all__ = [
    "MODULE",
    "ONNX",
    "ONNX_BACKENDS",
    "PLAN",
    "ORT_KIND_BY_PROVIDER",
    "RUNNERS",
    "RUNNER_KINDS",
    "MissingBackendError",
    "Runner",
    "RunnerError",
    "RunnerKind",
    "Timer",
    "create_runner",
    "runner_for_folder",
    "runner_kind",
]
