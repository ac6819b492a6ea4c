"""Latency statistics: percentiles, ratios with bootstrap intervals, interleaved schedules, and the
verdict a ratio supports (:func:`judge`, one for the bench reports and the service alike).

Timings are seconds; summaries report milliseconds. Nothing here times anything (the load average
is read from the OS): the functions can be tested on synthetic timings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """Figures of one variant at one shape, in milliseconds (throughput in items per second)."""

    count: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    throughput: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(seconds: Sequence[float], items_per_call: int = 1) -> LatencySummary:
    """Median, p90, p99, mean, std, min of ``seconds``; throughput = items_per_call / median."""
    values = np.asarray(seconds, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timings to summarize")
    ms = values * 1e3
    median = float(np.median(ms))
    return LatencySummary(
        count=int(values.size), median_ms=median, p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if values.size > 1 else 0.0, min_ms=float(ms.min()),
        throughput=items_per_call / (median / 1e3) if median > 0 else float("inf"),
    )


@dataclass(frozen=True)
class Ratio:
    """``median(variant) / median(baseline)`` with a bootstrap confidence interval."""

    ratio: float
    low: float
    high: float
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def median_ratio(variant: Sequence[float], baseline: Sequence[float], confidence: float = 0.95,
                 resamples: int = 2000, seed: int = 0) -> Ratio:
    """Ratio of medians and its percentile-bootstrap interval (each sample resampled independently).

    Below 1 means the variant is faster. Seeded, so the same timings give the same interval.
    """
    a, b = np.asarray(variant, np.float64), np.asarray(baseline, np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need timings")
    rng = np.random.default_rng(seed)
    boot_a = np.median(rng.choice(a, size=(resamples, a.size), replace=True), axis=1)
    boot_b = np.median(rng.choice(b, size=(resamples, b.size), replace=True), axis=1)
    ratios = boot_a / boot_b
    tail = (1 - confidence) / 2 * 100
    return Ratio(float(np.median(a) / np.median(b)), float(np.percentile(ratios, tail)),
                 float(np.percentile(ratios, 100 - tail)), confidence)


def interleaved_schedule(variants: Sequence[str], rounds: int, rotate: bool = True) -> list[str]:
    """The order to time ``variants`` in: round by round (A B C A B C ...), so drift in the
    machine's speed hits every variant alike. ``rotate`` starts each round one variant later
    (A B C, B C A, ...), so no variant always runs right after the same neighbour."""
    names = list(variants)
    order: list[str] = []
    for r in range(rounds):
        shift = r % len(names) if rotate and names else 0
        order.extend(names[shift:] + names[:shift])
    return order


def median_interval(seconds: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median, in milliseconds."""
    values = np.asarray(seconds, np.float64) * 1e3
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(resamples, values.size), replace=True), axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def ratio_from_intervals(variant_ms: float, variant_interval: Sequence[float], baseline_ms: float,
                         baseline_interval: Sequence[float], confidence: float = 0.95) -> Ratio:
    """``variant_ms / baseline_ms`` with an interval combined from each median's own interval.

    For two medians measured independently, whose raw timings are no longer at hand (a report
    holds each median and its bootstrap interval): on the log scale the ratio's half-widths are
    the two medians' half-widths added in quadrature, each side separately (the variant's lower
    half with the baseline's upper half, and the reverse), so skewed intervals stay skewed. It
    agrees closely with :func:`median_ratio` on the same timings; ``confidence`` must be the
    level the two intervals were made at.
    """
    values = [variant_ms, *variant_interval, baseline_ms, *baseline_interval]
    if len(values) != 6 or min(values) <= 0:
        raise ValueError(f"medians and interval bounds must be two positive numbers each, not {values}")
    log_a, log_b = np.log(variant_ms), np.log(baseline_ms)
    a_low, a_high = np.log(variant_interval[0]), np.log(variant_interval[1])
    b_low, b_high = np.log(baseline_interval[0]), np.log(baseline_interval[1])
    down = float(np.hypot(max(log_a - a_low, 0.0), max(b_high - log_b, 0.0)))
    up = float(np.hypot(max(a_high - log_a, 0.0), max(log_b - b_low, 0.0)))
    ratio = variant_ms / baseline_ms
    return Ratio(ratio, ratio * float(np.exp(-down)), ratio * float(np.exp(up)), confidence)


# ---- verdicts: what a ratio and its interval support, on this many samples, on this machine ----

MIN_SAMPLES = 20  # below this a percentile-bootstrap interval of a median is too narrow to trust
SAME_WITHIN = 0.01  # medians within 1% of each other: no number of rounds would settle which is faster


@dataclass(frozen=True)
class MachineLoad:
    """The 1-minute load average before and after a measurement, and the CPUs it ran on."""

    before: float
    after: float
    cpus: int

    @property
    def loaded(self) -> bool:
        """More runnable tasks than CPUs at either end: other work competed for the cores."""
        return max(self.before, self.after) > self.cpus

    def as_dict(self) -> dict:
        return {"before": self.before, "after": self.after, "cpus": self.cpus, "loaded": self.loaded}

    def text(self) -> str:
        """``load average 3.1 → 3.4 on 2 CPUs``."""
        return f"load average {self.before:.2f} → {self.after:.2f} on {self.cpus} CPUs"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform says, else every CPU)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def machine_load(before: float) -> MachineLoad:
    """The load record of a measurement that started at load average ``before`` and ends now."""
    return MachineLoad(before, load_average(), usable_cpus())


def load_from(record: Mapping[str, Any] | None) -> MachineLoad | None:
    """A :class:`MachineLoad` from its ``as_dict()`` form (None stays None)."""
    return None if not record else MachineLoad(record["before"], record["after"], record["cpus"])


@dataclass(frozen=True)
class Verdict:
    """What a ratio of medians supports: ``faster``/``slower`` only with enough samples and an
    interval that excludes 1, else ``no clear difference``; ``note`` says why and what would settle it."""

    verdict: str
    samples: int
    min_samples: int
    rounds_to_settle: int | None  # None: settled already, or no number of rounds would settle it
    loaded: bool
    note: str

    @property
    def clear(self) -> bool:
        """A verdict a colour may show (faster or slower)."""
        return self.verdict != "no clear difference"

    def as_dict(self) -> dict:
        return asdict(self)


def rounds_to_exclude_one(ratio: float, low: float, high: float, samples: int) -> int | None:
    """Rounds after which the interval would stop at 1, if the spread shrinks as 1/sqrt(rounds) at the
    observed ratio: ``samples * (half-width towards 1 / distance to 1)²`` on the log scale. None when
    the ratio is within :data:`SAME_WITHIN` of 1 (no number of rounds would settle it)."""
    if abs(math.log(ratio)) < math.log1p(SAME_WITHIN):
        return None
    distance = abs(math.log(ratio))
    half = math.log(ratio) - math.log(low) if ratio > 1 else math.log(high) - math.log(ratio)
    return max(1, math.ceil(samples * (max(half, 0.0) / distance) ** 2))


def judge(ratio: Ratio | Mapping[str, float], samples: int, load: MachineLoad | None = None,
          min_samples: int = MIN_SAMPLES) -> Verdict:
    """The verdict on ``ratio`` (variant / reference median, with its interval) from ``samples`` rounds
    (the fewer of the two sides'), measured under ``load`` (None: not recorded). One function for the
    bench reports, the service's comparison and its live view."""
    r = ratio.as_dict() if isinstance(ratio, Ratio) else ratio
    value, low, high = float(r["ratio"]), float(r["low"]), float(r["high"])
    excludes_one = high < 1 or low > 1
    word = ("faster" if high < 1 else "slower") if excludes_one and samples >= min_samples else "no clear difference"
    loaded = bool(load and load.loaded)
    notes = [] if word != "no clear difference" else [_unsettled_note(value, low, high, samples, min_samples)]
    if loaded:
        notes.append(f"loaded machine: {load.text()}")
    needed = None if word != "no clear difference" else _rounds_needed(value, low, high, samples, min_samples)
    return Verdict(word, samples, min_samples, needed, loaded, "; ".join(notes))


def _rounds_needed(value: float, low: float, high: float, samples: int, min_samples: int) -> int | None:
    if value <= 0 or low <= 0 or high <= 0:
        return None
    needed = rounds_to_exclude_one(value, low, high, samples)
    return None if needed is None else max(needed, min_samples)


def _unsettled_note(value: float, low: float, high: float, samples: int, min_samples: int) -> str:
    """Why there is no clear difference, and how many rounds would settle it."""
    why = (f"{samples} rounds, under the minimum of {min_samples}" if samples < min_samples
           else f"the interval holds 1 after {samples} rounds")
    needed = _rounds_needed(value, low, high, samples, min_samples)
    if needed is None:
        return f"{why}; the medians are within {SAME_WITHIN:.0%} of each other: more rounds would not settle it"
    return f"{why}; about {needed} rounds would settle it at this spread"
