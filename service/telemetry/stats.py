"""Per-model statistics of served traffic, in the shape of Triton's statistics extension, plus a
window of recent requests for live percentiles.

Triton's semantics: every duration is cumulative ``{"count", "ns"}``; ``success``/``fail`` time the
whole request in the server; ``queue`` is the wait for the model; ``compute_input`` is input
preparation (decoding, batch assembly); ``compute_infer`` the backend call (the runner's
``last_inference_time``); ``compute_output`` output extraction and encoding. ``inference_count``
counts batch items, ``execution_count`` backend calls (a dynamic batch counts once).

Several processes serving the same models (``dyt-serve --workers N``) add up
through a :class:`StatsStore`: each process publishes its cumulative entry (versioned, so a late or
repeated publish never counts twice) and its new window samples; readers merge every process's
entry (:func:`merge_entries`) and the newest samples of all. :class:`SqliteStatsStore` is the store
of worker processes on one host (on Ray Serve, the ingress records every answer itself). The
generate routes' statistics (:mod:`service.telemetry.generation_stats`) go to the same store the same way:
a versioned cumulative entry per process and recent samples by kind (time to first token, inter-token
gap, tokens/s).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

STATS_DIR_ENV = "DYT_SERVE_STATS_DIR"
STATS_FILE = "dyt-stats.sqlite"
Sample = tuple[int, float, float, float]  # (sequence number, wall time, compute s, end-to-end s)
GenerationSample = tuple[int, str, float, float]  # (sequence number, kind, wall time, value)
GENERATION_KINDS = ("first_token", "gap", "tokens_per_s")


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
        self.version = 0  # bumped by every record: a publish with a higher version supersedes
        self.recent: deque[Sample] = deque(maxlen=window)  # the window with sequence numbers and wall times
        self.shared: SharedView | None = None

    def share(self, store: StatsStore, model: str, source: str) -> None:
        """From now on publish every record to ``store`` (as ``source``, e.g. the process id) and
        answer :meth:`as_triton`, :meth:`samples` and :attr:`success_count` for every source."""
        self.shared = SharedView(store, model, source)

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
            self.version += 1
            self.recent.append((self.version, time.time(), timing.infer_s, timing.total_s))
        self._publish()

    def record_failure(self, total_s: float) -> None:
        with self._lock:
            self.stages["fail"].add(total_s)
            self.version += 1
        self._publish()

    def _publish(self) -> None:
        if self.shared is not None:
            version, entry, samples = self.export(self.shared.published)
            self.shared.publish(version, entry, samples)

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
        """The window's compute and end-to-end times (seconds), oldest first (of every process
        when shared)."""
        if self.shared is not None:
            pairs = [(s[2], s[3]) for s in self.shared.store.window(self.shared.model, self.window.maxlen or 1)]
        else:
            with self._lock:
                pairs = list(self.window)
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @property
    def success_count(self) -> int:
        """Requests answered (by every process when shared)."""
        if self.shared is not None:
            return self.as_triton("", None)["inference_stats"]["success"]["count"]
        return self.stages["success"].count

    def export(self, after: int = 0) -> tuple[int, dict, list[Sample]]:
        """What a process publishes: its version, its cumulative entry (nameless) and the window
        samples newer than sequence number ``after``."""
        with self._lock:
            samples = [s for s in self.recent if s[0] > after]
            version = self.version
        return version, self._entry("", None), samples

    def as_triton(self, name: str, version: str | None) -> dict:
        """This model's entry of ``{"model_stats": [...]}``, in Triton's schema (every process's
        entries added up when shared)."""
        if self.shared is not None:
            return merge_entries(name, version, self.shared.store.entries(self.shared.model))
        return self._entry(name, version)

    def _entry(self, name: str, version: str | None) -> dict:
        with self._lock:
            entry = {
                "name": name, "version": version or "", "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {k: v.as_dict() for k, v in self.stages.items()},
                "batch_stats": [{"batch_size": size, **{k: v.as_dict() for k, v in durations.items()}}
                                for size, durations in sorted(self.batch_stats.items())],
            }
        return entry


def merge_entries(name: str, version: str | None, entries: list[dict]) -> dict:
    """One Triton statistics entry that adds up ``entries`` (one per process or replica): counts
    and durations summed, per batch size too; ``last_inference`` the latest."""
    stages = {stage: {"count": 0, "ns": 0} for stage in STAGES}
    sizes: dict[int, dict[str, dict[str, int]]] = {}
    for entry in entries:
        for stage, duration in entry["inference_stats"].items():
            _add(stages.setdefault(stage, {"count": 0, "ns": 0}), duration)
        for per_size in entry["batch_stats"]:
            merged = sizes.setdefault(per_size["batch_size"], {})
            for key in ("compute_input", "compute_infer", "compute_output"):
                _add(merged.setdefault(key, {"count": 0, "ns": 0}), per_size[key])
    return {"name": name, "version": version or "",
            "last_inference": max((e["last_inference"] for e in entries), default=0),
            "inference_count": sum(e["inference_count"] for e in entries),
            "execution_count": sum(e["execution_count"] for e in entries),
            "inference_stats": stages,
            "batch_stats": [{"batch_size": size, **sizes[size]} for size in sorted(sizes)]}


def _add(total: dict[str, int], duration: dict[str, int]) -> None:
    total["count"] += duration["count"]
    total["ns"] += duration["ns"]


class StatsStore(Protocol):
    """Where processes serving the same models put their statistics, and read everyone's."""

    def publish(self, model: str, source: str, version: int, entry: dict, samples: list[Sample]) -> None:
        """Record ``source``'s cumulative ``entry`` (ignored unless ``version`` is newer than the
        one held) and its new window ``samples`` (a sequence number already held is ignored)."""

    def entries(self, model: str) -> list[dict]:
        """The latest entry of every source of ``model``."""

    def window(self, model: str, size: int) -> list[Sample]:
        """The ``size`` newest samples of ``model`` over every source, oldest first."""

    def publish_generation(self, model: str, source: str, version: int, entry: dict,
                           samples: list[GenerationSample]) -> None:
        """The same for ``model``'s generation statistics: ``source``'s cumulative entry (kept
        unless an entry of a newer version is held) and its new samples."""

    def generation_entries(self, model: str) -> list[dict]:
        """The latest generation entry of every source of ``model``."""

    def generation_window(self, model: str, size: int) -> dict[str, list[float]]:
        """Per kind of :data:`GENERATION_KINDS`, the values of the ``size`` newest generation samples
        of ``model`` over every source, oldest first."""


@dataclass
class SharedView:
    """A ModelStats's link to its store: the model's name there, this process's source name and the
    last sequence number published."""

    store: StatsStore
    model: str
    source: str
    published: int = 0

    def publish(self, version: int, entry: dict, samples: list[Sample]) -> None:
        self.store.publish(self.model, self.source, version, entry, samples)
        self.published = max([self.published, *(s[0] for s in samples)])


class SqliteStatsStore:
    """A store in one SQLite file that the worker processes of one host share (WAL mode: readers
    never wait for a writer). Each process opens its own connection."""

    SCHEMA = ("CREATE TABLE IF NOT EXISTS entries (model TEXT, source TEXT, version INTEGER, entry TEXT, "
              "PRIMARY KEY (model, source))",
              "CREATE TABLE IF NOT EXISTS samples (model TEXT, source TEXT, seq INTEGER, at REAL, "
              "infer REAL, total REAL, PRIMARY KEY (model, source, seq))",
              "CREATE TABLE IF NOT EXISTS generation_entries (model TEXT, source TEXT, version INTEGER, "
              "entry TEXT, PRIMARY KEY (model, source))",
              "CREATE TABLE IF NOT EXISTS generation_samples (model TEXT, source TEXT, seq INTEGER, kind TEXT, "
              "at REAL, value REAL, PRIMARY KEY (model, source, seq))",
              "CREATE INDEX IF NOT EXISTS generation_recent ON generation_samples (model, kind, at)")

    def __init__(self, path: str | Path, window: int = 2048) -> None:
        self.path, self.size = Path(path), window
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        for statement in self.SCHEMA:
            self._db.execute(statement)
        self._writes = 0
        self._generation_rows: dict[str, int] = {}  # samples written per model since its last pruning

    def publish(self, model: str, source: str, version: int, entry: dict, samples: list[Sample]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._put_entry("entries", model, source, version, entry)
            self._db.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                                 [(model, source, *s) for s in samples])
            self._writes += 1
            if self._writes % self.size == 0:  # now and then, drop samples older than any window needs
                self._db.execute("DELETE FROM samples WHERE model = ? AND at < (SELECT at FROM samples WHERE "
                                 "model = ? ORDER BY at DESC LIMIT 1 OFFSET ?)", (model, model, self.size))
            self._db.execute("COMMIT")

    def entries(self, model: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT entry FROM entries WHERE model = ?", (model,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def window(self, model: str, size: int) -> list[Sample]:
        with self._lock:
            rows = self._db.execute("SELECT seq, at, infer, total FROM samples WHERE model = ? "
                                    "ORDER BY at DESC LIMIT ?", (model, size)).fetchall()
        return [tuple(row) for row in reversed(rows)]  # type: ignore[misc]

    def publish_generation(self, model: str, source: str, version: int, entry: dict,
                           samples: list[GenerationSample]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._put_entry("generation_entries", model, source, version, entry)
            self._db.executemany("INSERT OR IGNORE INTO generation_samples VALUES (?, ?, ?, ?, ?, ?)",
                                 [(model, source, *s) for s in samples])
            rows = self._generation_rows.get(model, 0) + len(samples)
            if rows >= self.size:  # now and then, drop samples older than any window needs
                rows = 0
                for kind in GENERATION_KINDS:
                    self._db.execute("DELETE FROM generation_samples WHERE model = ? AND kind = ? AND at < "
                                     "(SELECT at FROM generation_samples WHERE model = ? AND kind = ? "
                                     "ORDER BY at DESC LIMIT 1 OFFSET ?)", (model, kind, model, kind, self.size))
            self._generation_rows[model] = rows
            self._db.execute("COMMIT")

    def _put_entry(self, table: str, model: str, source: str, version: int, entry: dict) -> None:
        """``source``'s entry of ``model`` in ``table`` (entries, generation_entries), unless the one
        held is as new or newer (inside the caller's transaction)."""
        self._db.execute(f"INSERT INTO {table} VALUES (?, ?, ?, ?) ON CONFLICT (model, source) DO UPDATE SET "
                         "version = excluded.version, entry = excluded.entry WHERE excluded.version > version",
                         (model, source, version, json.dumps(entry)))

    def generation_entries(self, model: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT entry FROM generation_entries WHERE model = ?", (model,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def generation_window(self, model: str, size: int) -> dict[str, list[float]]:
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot for every kind
            try:
                kinds = {kind: self._db.execute("SELECT value FROM generation_samples WHERE model = ? AND kind = ? "
                                                "ORDER BY at DESC, seq DESC LIMIT ?", (model, kind, size)).fetchall()
                         for kind in GENERATION_KINDS}
            finally:
                self._db.execute("COMMIT")
        return {kind: [row[0] for row in reversed(rows)] for kind, rows in kinds.items()}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def shared_store_from_environment(window: int = 2048) -> SqliteStatsStore | None:
    """The store of this host's worker processes when ``$DYT_SERVE_STATS_DIR`` names its folder
    (dyt-serve --workers N sets it), else None."""
    folder = os.environ.get(STATS_DIR_ENV)
    return SqliteStatsStore(Path(folder) / STATS_FILE, window) if folder else None


def share_models(models: Any, store: StatsStore, source: str) -> None:
    """Make every model (``name -> ServedModel``) publish to ``store`` as ``source``: its Triton
    statistics, and a text-generation model's generation statistics too."""
    for name, model in models.items():
        model.stats.share(store, name, source)
        generation = getattr(model, "generation_stats", None)
        if generation is not None:
            generation.share(store, name, source)
