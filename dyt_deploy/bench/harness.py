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
    """Seconds per call for every (group, shape, variant); a group is one runner + setting
    (e.g. ``ort/ort-transformers``)."""

    seconds: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)

    def add(self, group: str, shape: str, variant: str, value: float) -> None:
        self.seconds.setdefault((group, shape, variant), []).append(value)


def time_all(groups: dict[str, dict[str, Runner]], feeds: dict[str, dict[str, np.ndarray]], warmup: int,
             iters: int, timings: Timings, progress: Progress | None = None) -> None:
    """Time every (group, variant) runner on every shape: warm each up, then ``iters`` rounds that
    run all of them once, in rotating order, so the machine's drift hits every runner alike.

    A call's time is the runner's ``last_inference_time`` (the backend call alone).
    """
    members = {(group, variant): runner for group, runners in groups.items() for variant, runner in runners.items()}
    total = len(feeds) * len(members) * iters
    done = 0
    for shape, feed in feeds.items():
        for runner in members.values():
            for _ in range(warmup):
                runner.infer(feed)
        for key in interleaved_schedule(list(members), iters):
            members[key].infer(feed)
            timings.add(key[0], shape, key[1], members[key].last_inference_time)
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


def _fastest(timings: Timings, shape: str, variants: list[str], prefix: str) -> tuple[str, str, list[float]] | None:
    found = [(g, v, t) for (g, s, v), t in timings.seconds.items()
             if s == shape and v in variants and g.startswith(prefix)]
    return min(found, key=lambda x: float(np.median(x[2])), default=None)


def headline(timings: Timings, baseline: str, contenders: list[str], prefix: str = "ort/") -> list[dict]:
    """Per shape: the fastest ``contenders`` entry against the fastest ``baseline`` entry, over every
    ``prefix`` group (e.g. the best DyT export against LayerNorm with its best fusions)."""
    rows = []
    for shape in sorted({k[1] for k in timings.seconds}):
        base = _fastest(timings, shape, [baseline], prefix)
        best = _fastest(timings, shape, contenders, prefix)
        if base is None or best is None:
            continue
        rows.append({"shape": shape, "baseline": f"{base[1]} ({base[0]})", "contender": f"{best[1]} ({best[0]})",
                     "baseline_median_ms": float(np.median(base[2])) * 1e3,
                     "contender_median_ms": float(np.median(best[2])) * 1e3,
                     "ratio": median_ratio(best[2], base[2]).as_dict()})
    return rows
