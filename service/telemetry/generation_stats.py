"""Statistics of one model's generations (the generate routes): counts, tokens, and windows of recent
timings for live percentiles.

* time to first token: from a generation's start (admitted, before its prompt waits for the model's
  worker) to its first token, per generation;
* inter-token latency: between consecutive tokens of a generation, per token;
* tokens/s: a generation's output tokens over the seconds from its start to its last token.

One process keeps them in memory. With ``dyt-serve --workers N`` every worker also publishes them
to the store the Triton statistics of /infer go to (:meth:`GenerationStats.share`, a SQLite file):
its cumulative entry when a generation starts and, with that generation's samples, when it ends (one
small transaction each, none per token); :meth:`GenerationStats.summary` then adds up every
worker's counts and takes the percentiles over the newest samples of all. ``running`` counts only
workers still alive (a worker that died mid-generation counts none; the requests it finished still
count). Prometheus's generation metrics add up every worker on their own.

On Ray Serve a replica hands its entry and new samples (:meth:`GenerationStats.export`) to the
router with its answers, and the router publishes them to the ``stats`` deployment
(:mod:`service.engines.ray`); the router's live view reads them back with :func:`generation_summary`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyt_deploy.repository import process_gone

from .stats import GENERATION_KINDS, GenerationSample, StatsStore

FINISH_REASONS = ("stop", "length", "cancelled")
HOST = socket.gethostname()


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


@dataclass
class SharedGeneration:
    """A GenerationStats's link to its store: the model's name there and this process's source."""

    store: StatsStore
    model: str
    source: str


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
        self.version = 0  # bumped by every change: a publish with a higher version supersedes
        self.sequence = 0  # the last sample's sequence number
        # the window: (sequence number, kind, time, value) by kind (GENERATION_KINDS), what is published
        self.recent: dict[str, deque[GenerationSample]] = {kind: deque(maxlen=window) for kind in GENERATION_KINDS}
        self.shared: SharedGeneration | None = None

    def share(self, store: StatsStore, model: str, source: str) -> None:
        """From now on publish to ``store`` (as ``source``, e.g. the process id) when a generation
        starts and ends, and answer :meth:`summary` and :meth:`samples` for every source."""
        self.shared = SharedGeneration(store, model, source)

    def started(self) -> None:
        with self._lock:
            self.running += 1
            self.version += 1
            shared, version = self.shared, self.version
            entry = self._entry() if shared is not None else None
        if shared is not None:  # running changed: the entry alone
            shared.store.publish_generation(shared.model, shared.source, version, entry, [])

    def record(self, record: GenerationRecord, failed: bool = False) -> None:
        """A generation ended: counted by its finish reason (or as failed), its timings kept (and,
        when shared, published with the new entry in one transaction)."""
        with self._lock:
            self._add(record, failed)
            self.version += 1
            shared, version, samples = self.shared, self.version, self._samples_of(record)
            for sample in samples:
                self.recent[sample[1]].append(sample)
            if shared is not None:
                entry = self._entry()
        if shared is not None:
            shared.store.publish_generation(shared.model, shared.source, version, entry, samples)

    def _add(self, record: GenerationRecord, failed: bool) -> None:
        self.running -= 1
        if failed:
            self.failed += 1
        else:
            self.finished[record.finish_reason] += 1
        self.prompt_tokens += record.prompt_tokens
        self.output_tokens += record.output_tokens

    def _samples_of(self, record: GenerationRecord) -> list[GenerationSample]:
        """What a generation adds to the shared window, numbered on from the last sample."""
        values = [("gap", gap) for gap in record.gaps_s]
        if record.time_to_first_token_s is not None:
            values.append(("first_token", record.time_to_first_token_s))
        if record.output_tokens > 1:
            values.append(("tokens_per_s", record.tokens_per_s))
        now = time.time()
        first = self.sequence + 1
        self.sequence += len(values)
        return [(first + i, kind, now, value) for i, (kind, value) in enumerate(values)]

    def export(self, after: int = 0) -> tuple[int, dict[str, Any], list[GenerationSample]]:
        """What a process hands on (a Ray replica, with its answers): its version, its cumulative
        entry and the window's samples numbered after ``after``, in order."""
        with self._lock:
            samples = sorted((s for kind in self.recent.values() for s in newer(kind, after)), key=lambda s: s[0])
            return self.version, self._entry(), samples

    def _entry(self) -> dict[str, Any]:
        """This process's cumulative counts, as published (with its process id and host)."""
        return {"finished": {reason: self.finished[reason] for reason in FINISH_REASONS}, "failed": self.failed,
                "running": self.running, "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "pid": os.getpid(), "host": HOST}

    def _windows(self) -> tuple[dict[str, Any], dict[str, list[float]]]:
        """The counts (every live source's running) and the window's values by kind, of every
        source when shared."""
        if self.shared is not None:
            entries = self.shared.store.generation_entries(self.shared.model)
            return merge_generation_entries(entries), self.shared.store.generation_window(self.shared.model,
                                                                                          self.window)
        with self._lock:
            return self._entry(), {kind: [s[3] for s in samples] for kind, samples in self.recent.items()}

    def samples(self) -> tuple[list[float], list[float]]:
        """The window's times to first token and inter-token gaps, in seconds (of every process when
        shared)."""
        return self.report()[1]

    def summary(self) -> dict[str, Any]:
        """Counts, tokens, and p50/p90/mean of the window's time to first token (ms), inter-token
        latency (ms) and tokens/s; what /api/live and the dashboard show (every process's counts
        added up and the newest samples of all when shared)."""
        return self.report()[0]

    def report(self) -> tuple[dict[str, Any], tuple[list[float], list[float]]]:
        """:meth:`summary` and :meth:`samples` from one read of the store."""
        counts, values = self._windows()
        return generation_summary(counts, values, self.window)


def newer(samples: deque[GenerationSample], after: int) -> list[GenerationSample]:
    """The samples numbered after ``after``, of samples kept in the order of their numbers."""
    found = []
    for sample in reversed(samples):
        if sample[0] <= after:
            break
        found.append(sample)
    return found[::-1]


def generation_summary(counts: dict[str, Any], values: dict[str, list[float]],
                       window: int) -> tuple[dict[str, Any], tuple[list[float], list[float]]]:
    """:meth:`GenerationStats.report` of ``counts`` (an entry, or entries merged) and the window's
    ``values`` by kind (:data:`~service.telemetry.stats.GENERATION_KINDS`)."""
    finished = counts["finished"]
    first, gaps = values["first_token"], values["gap"]
    summary = {"requests": sum(finished.values()) + counts["failed"], "running": counts["running"],
               "failed": counts["failed"], "cancelled": finished["cancelled"], "finish_reasons": finished,
               "prompt_tokens": counts["prompt_tokens"], "output_tokens": counts["output_tokens"],
               "time_to_first_token_ms": quantiles(first, 1e3), "inter_token_ms": quantiles(gaps, 1e3),
               "tokens_per_s": quantiles(values["tokens_per_s"]), "window": window}
    return summary, (first, gaps)


def merge_generation_entries(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One entry that adds up ``entries`` (one per process): finish reasons, failures and tokens of
    every process; ``running`` of the processes still alive only."""
    finished = {reason: sum(e["finished"].get(reason, 0) for e in entries) for reason in FINISH_REASONS}
    return {"finished": finished, "failed": sum(e["failed"] for e in entries),
            "running": sum(e["running"] for e in entries if process_alive(e.get("pid"), e.get("host"))),
            "prompt_tokens": sum(e["prompt_tokens"] for e in entries),
            "output_tokens": sum(e["output_tokens"] for e in entries)}


def process_alive(pid: int | None, host: str | None = None) -> bool:
    """Whether process ``pid`` still runs (True when unknown: no pid, or another ``host`` than this
    one, a Ray replica on another node)."""
    if not isinstance(pid, int) or pid <= 0 or (host is not None and host != HOST):
        return True
    return not process_gone(pid)
