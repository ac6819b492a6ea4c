"""Per-model statistics of served traffic, in the shape of Triton's statistics extension, plus a
window of recent requests for live percentiles.

Triton's semantics: every duration is cumulative ``{"count", "ns"}``; ``success``/``fail`` time the
whole request in the server; ``queue`` is the wait for the model; ``compute_input`` is input
preparation (decoding, batch assembly); ``compute_infer`` the backend call (the runner's
``last_inference_time``); ``compute_output`` output extraction and encoding. ``inference_count``
counts batch items, ``execution_count`` backend calls (a dynamic batch counts once).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass
class Duration:
    """A cumulative count and total of durations, in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(frozen=True)
class RequestTiming:
    """Where one request's time went, in seconds."""

    queue_s: float
    input_s: float
    infer_s: float
    output_s: float
    total_s: float


STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


class ModelStats:
    """Thread-safe statistics of one model (requests finish on the event loop, executions on the
    model's worker thread)."""

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self.stages = {stage: Duration() for stage in STAGES}
        self.batch_stats: dict[int, dict[str, Duration]] = {}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.window: deque[tuple[float, float]] = deque(maxlen=window)

    def record_success(self, timing: RequestTiming, batch_size: int) -> None:
        """A request answered: its stages, its batch items, and a (compute, end-to-end) sample."""
        with self._lock:
            self.stages["success"].add(timing.total_s)
            self.stages["queue"].add(timing.queue_s)
            self.stages["compute_input"].add(timing.input_s)
            self.stages["compute_infer"].add(timing.infer_s)
            self.stages["compute_output"].add(timing.output_s)
            self.inference_count += batch_size
            self.last_inference_ms = int(time.time() * 1e3)
            self.window.append((timing.infer_s, timing.total_s))

    def record_failure(self, total_s: float) -> None:
        with self._lock:
            self.stages["fail"].add(total_s)

    def record_execution(self, batch_size: int, input_s: float, infer_s: float, output_s: float) -> None:
        """One backend call over ``batch_size`` items (several requests when batched dynamically)."""
        with self._lock:
            self.execution_count += 1
            per_size = self.batch_stats.setdefault(
                batch_size, {k: Duration() for k in ("compute_input", "compute_infer", "compute_output")})
            per_size["compute_input"].add(input_s)
            per_size["compute_infer"].add(infer_s)
            per_size["compute_output"].add(output_s)

    def samples(self) -> tuple[list[float], list[float]]:
        """The window's compute and end-to-end times (seconds), oldest first."""
        with self._lock:
            pairs = list(self.window)
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def as_triton(self, name: str, version: str | None) -> dict:
        """This model's entry of ``{"model_stats": [...]}``, in Triton's schema."""
        with self._lock:
            entry = {
                "name": name, "version": version or "", "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {k: v.as_dict() for k, v in self.stages.items()},
                "batch_stats": [{"batch_size": size, **{k: v.as_dict() for k, v in durations.items()}}
                                for size, durations in sorted(self.batch_stats.items())],
            }
        return entry
