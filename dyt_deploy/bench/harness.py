"""Time runners of several variants on the same inputs, interleaved round by round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..runners.base import Runner
from .stats import LatencySummary, Ratio, interleaved_schedule, median_ratio, summarize

Progress = Callable[[int, int], None]  # (done, total) timed calls


@dataclass
class Timings:
    """Seconds per call for every (group, shape, variant); a group is one runner + setting."""

    seconds: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)

    def add(self, group: str, shape: str, variant: str, value: float) -> None:
        self.seconds.setdefault((group, shape, variant), []).append(value)


def time_group(group: str, runners: dict[str, Runner], feeds: dict[str, dict[str, np.ndarray]], warmup: int,
               iters: int, timings: Timings, progress: Progress | None = None) -> None:
    """Time every variant of one group on every shape: warm up each, then ``iters`` interleaved rounds.

    A call's time is the runner's ``last_inference_time`` (the backend call alone).
    """
    total = len(feeds) * len(runners) * iters
    done = 0
    for shape, feed in feeds.items():
        for runner in runners.values():
            for _ in range(warmup):
                runner.infer(feed)
        for variant in interleaved_schedule(list(runners), iters):
            runner = runners[variant]
            runner.infer(feed)
            timings.add(group, shape, variant, runner.last_inference_time)
            done += 1
            if progress:
                progress(done, total)


@dataclass
class ResultRow:
    group: str
    shape: str
    variant: str
    summary: LatencySummary
    ratio: Ratio | None  # to the baseline variant of the same group and shape

    def as_dict(self) -> dict:
        return {"group": self.group, "shape": self.shape, "variant": self.variant,
                "summary": self.summary.as_dict(), "ratio_to_baseline": self.ratio and self.ratio.as_dict()}


def analyze(timings: Timings, baseline: str, batch_of: Callable[[str], int]) -> list[ResultRow]:
    """Summaries per (group, shape, variant) and each variant's ratio to ``baseline``'s median."""
    rows = []
    for (group, shape, variant), values in timings.seconds.items():
        base = timings.seconds.get((group, shape, baseline))
        ratio = median_ratio(values, base) if base and variant != baseline else None
        rows.append(ResultRow(group, shape, variant, summarize(values, batch_of(shape)), ratio))
    return rows
