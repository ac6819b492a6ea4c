"""The one small interface every backend implements (after Polygraphy's BaseRunner).

```python
with OnnxRuntimeRunner("model.onnx") as runner:      # activate(): load and warm up
    outputs = runner.infer({"pixel_values": x})      # dict[str, np.ndarray] -> dict[str, np.ndarray]
    runner.last_inference_time                       # seconds of the backend call alone
```
Export verification, check, bench and the service use runners and nothing else; they are made by
``runners.create_runner`` (see ``registry.py``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import DytDeployError, MissingBackendError

__all__ = ["MissingBackendError", "Runner", "RunnerError", "Timer"]


class RunnerError(DytDeployError):
    """A runner was misused (inference before activate) or given a bad feed."""


class Runner(ABC):
    """Base runner. Subclasses implement ``_activate``, ``_infer`` and optionally ``_deactivate``.

    ``last_inference_time`` is measured the same way for every backend: wall time around the
    backend's own compute call, after inputs are prepared, including the device synchronisation
    a GPU backend needs before its outputs are valid, excluding host<->device copies where the
    backend lets them be separated (IOBinding, explicit copies).
    """

    name: str = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.last_inference_time: float | None = None

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RunnerError(f"{self.name}: call activate() (or use it as a context manager) before infer()")
        return self._infer(feed)

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate(self) -> None:
        return None


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``; perf_counter based."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
