"""Latency statistics: percentiles, ratios with bootstrap intervals, interleaved schedules.

Timings are seconds; summaries report milliseconds. Nothing here measures anything: the
functions are pure so they can be tested on synthetic timings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

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
