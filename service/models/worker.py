"""One model's backend calls, on a thread of their own.

Each model has one worker (:class:`WorkerThread`, an executor of one thread): every call of its
runner, from traffic, a dynamic batch, a generation step or a controlled comparison, runs there one
at a time, so the runner is never used concurrently and its ``last_inference_time`` is that call's.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from dyt_deploy.runners import Runner

from ..telemetry.stats import ModelStats

T = TypeVar("T")


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


class WorkerThread(Executor):
    """One thread that runs calls in order. An ``Executor`` (``submit``, ``loop.run_in_executor``),
    and for a coroutine a leaner way, :meth:`call`: the thread sets an asyncio future directly,
    without a ``concurrent.futures.Future`` to create, wrap and chain. The round trip of an empty
    call from the event loop: ~18 µs instead of ~45 µs for a one-thread ``ThreadPoolExecutor``
    (uvloop, 2 cores, threads idle in between). Every backend call makes one: an inference, a
    dynamic batch, a generation step.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Any] | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)  # started by the first call

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._put((lambda: fn(*args, **kwargs), future))
        return future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread, awaited."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((lambda: fn(*args), (loop, future)))
        return await future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop after the calls already queued (``cancel_futures`` is not supported: they all run)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _put(self, job: tuple[Callable[[], Any], Any]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the model's worker thread is shut down")
            if self._thread.ident is None:
                self._thread.start()
            self._jobs.put(job)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, target = job
            if isinstance(target, Future):
                if target.set_running_or_notify_cancel():
                    try:
                        target.set_result(work())
                    except BaseException as err:  # handed to the caller, as ThreadPoolExecutor does
                        target.set_exception(err)
                continue
            loop, future = target
            try:
                outcome: tuple[Any, BaseException | None] = (work(), None)
            except BaseException as err:
                outcome = (None, err)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is closed: nobody waits for the answer
                pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: the call's outcome into its future (unless its waiter was cancelled)."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ModelWorker:
    """A runner (set by :meth:`attach` once loaded) and the one thread that calls it.

    ``batched``: dim 0 of every tensor is the batch dim (statistics count its items).
    """

    def __init__(self, name: str, stats: ModelStats) -> None:
        self.stats = stats
        self.runner: Runner | None = None
        self.batched = False
        self.executor = WorkerThread(f"model-{name}")

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
        execution = await self.executor.call(self.run_batch, [feed])
        return execution.outputs[0], execution.started - enqueued, execution.infer_s

    async def timed(self, feed: dict[str, np.ndarray]) -> float:
        """Compute time of one call made on the worker (between traffic calls)."""
        return await self.executor.call(self.run_timed, feed)

    async def close(self) -> None:
        """Deactivate the runner on its own thread, then let the thread go."""
        await self.executor.call(self._deactivate)
        self.executor.shutdown(wait=False)

    def _deactivate(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
