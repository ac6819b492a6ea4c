"""One model's backend calls, on a thread of their own.

Each model has one worker (a ``ThreadPoolExecutor`` of one thread): every call of its runner, from
traffic, a dynamic batch or a controlled comparison, runs there one at a time, so the runner is
never used concurrently and its ``last_inference_time`` is that call's.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dyt_deploy.runners import Runner

from .stats import ModelStats


@dataclass(frozen=True)
class Execution:
    """One backend call over one or more requests: when it started, its compute time, and each
    request's outputs."""

    started: float
    infer_s: float
    outputs: list[dict[str, np.ndarray]]


def batch_items(feed: dict[str, np.ndarray]) -> int:
    """Dim 0 of the first input (1 for a scalar input)."""
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def split_outputs(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Split batched outputs along dim 0 into one dict per request of ``sizes`` items."""
    cuts = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(array, cuts) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(sizes))]


class ModelWorker:
    """A runner (set by :meth:`attach` once loaded) and the one thread that calls it.

    ``batched``: dim 0 of every tensor is the batch dim (statistics count its items).
    """

    def __init__(self, name: str, stats: ModelStats) -> None:
        self.stats = stats
        self.runner: Runner | None = None
        self.batched = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")

    def attach(self, runner: Runner, batched: bool) -> None:
        self.runner, self.batched = runner, batched

    def run_batch(self, feeds: list[dict[str, np.ndarray]]) -> Execution:
        """Blocking, on the worker: one backend call over ``feeds`` (concatenated along dim 0 when
        there are several), outputs split back per request."""
        assert self.runner is not None
        started = time.perf_counter()
        feed = feeds[0] if len(feeds) == 1 else {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
        prepared = time.perf_counter()
        outputs = self.runner.infer(feed)
        infer_s = self.runner.last_inference_time or (time.perf_counter() - prepared)
        called = time.perf_counter()
        per_request = [outputs] if len(feeds) == 1 else split_outputs(outputs, [batch_items(f) for f in feeds])
        items = sum(batch_items(f) for f in feeds) if self.batched else 1
        self.stats.record_execution(items, prepared - started, infer_s, time.perf_counter() - called)
        return Execution(started, infer_s, per_request)

    def run_timed(self, feed: dict[str, np.ndarray]) -> float:
        """Blocking, on the worker: one call's compute time, outside the traffic statistics."""
        assert self.runner is not None
        self.runner.infer(feed)
        return float(self.runner.last_inference_time or 0.0)

    async def run(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
        """One request's backend call on the worker; its outputs, queue time and compute time."""
        enqueued = time.perf_counter()
        execution = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, [feed])
        return execution.outputs[0], execution.started - enqueued, execution.infer_s

    async def timed(self, feed: dict[str, np.ndarray]) -> float:
        """Compute time of one call made on the worker (between traffic calls)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run_timed, feed)

    async def close(self) -> None:
        """Deactivate the runner on its own thread, then let the thread go."""
        await asyncio.get_running_loop().run_in_executor(self.executor, self._deactivate)
        self.executor.shutdown(wait=False)

    def _deactivate(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
