"""Statistics of one model's generations (the generate routes): counts, tokens, and windows of recent
timings for live percentiles.

* time to first token: from a generation's start (admitted, before its prompt waits for the model's
  worker) to its first token, per generation;
* inter-token latency: between consecutive tokens of a generation, per token;
* tokens/s: a generation's output tokens over the seconds from its start to its last token.

Per process: with ``dyt-serve --workers N`` each worker keeps its own (the Triton statistics of
/infer are shared through SQLite, these are not); Prometheus's generation metrics add up every worker.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass
class GenerationRecord:
    """One generation that ended: its tokens, why it ended, and when its tokens came."""

    prompt_tokens: int
    output_tokens: int = 0
    finish_reason: str = "cancelled"
    time_to_first_token_s: float | None = None  # None: no token came
    seconds: float = 0.0  # start to the last token (to the end when no token came)
    gaps_s: list[float] = field(default_factory=list)  # between consecutive tokens

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.output_tokens and self.seconds > 0 else 0.0


def quantiles(values: list[float], scale: float = 1.0) -> dict[str, float] | None:
    """p50, p90 and mean of ``values`` times ``scale`` (None without values)."""
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64) * scale
    p50, p90 = np.percentile(array, [50, 90])
    return {"p50": float(p50), "p90": float(p90), "mean": float(array.mean())}


class GenerationStats:
    """Thread-safe generation statistics of one model; ``window``: recent generations (and tokens)
    kept for the percentiles."""

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self.window = window
        self.finished: Counter[str] = Counter()
        self.failed = 0
        self.running = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.first_token_s: deque[float] = deque(maxlen=window)
        self.gaps_s: deque[float] = deque(maxlen=window)
        self.tokens_per_s: deque[float] = deque(maxlen=window)

    def started(self) -> None:
        with self._lock:
            self.running += 1

    def record(self, record: GenerationRecord, failed: bool = False) -> None:
        """A generation ended: counted by its finish reason (or as failed), its timings kept."""
        with self._lock:
            self.running -= 1
            if failed:
                self.failed += 1
            else:
                self.finished[record.finish_reason] += 1
            self.prompt_tokens += record.prompt_tokens
            self.output_tokens += record.output_tokens
            if record.time_to_first_token_s is not None:
                self.first_token_s.append(record.time_to_first_token_s)
            self.gaps_s.extend(record.gaps_s)
            if record.output_tokens > 1:
                self.tokens_per_s.append(record.tokens_per_s)

    def samples(self) -> tuple[list[float], list[float]]:
        """The window's times to first token and inter-token gaps, in seconds."""
        with self._lock:
            return list(self.first_token_s), list(self.gaps_s)

    def summary(self) -> dict[str, Any]:
        """Counts, tokens, and p50/p90/mean of the window's time to first token (ms), inter-token
        latency (ms) and tokens/s; what /api/live and the dashboard show."""
        with self._lock:
            first, gaps, rates = list(self.first_token_s), list(self.gaps_s), list(self.tokens_per_s)
            counts = {reason: self.finished[reason] for reason in FINISH_REASONS}
            return {"requests": sum(self.finished.values()) + self.failed, "running": self.running,
                    "failed": self.failed, "cancelled": counts["cancelled"], "finish_reasons": counts,
                    "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                    "time_to_first_token_ms": quantiles(first, 1e3), "inter_token_ms": quantiles(gaps, 1e3),
                    "tokens_per_s": quantiles(rates), "window": self.window}
