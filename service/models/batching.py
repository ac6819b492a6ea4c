"""Dynamic batching, as Triton's dynamic batcher does it: the first waiting request opens a batch;
requests that arrive within ``max_queue_delay_us`` and have the same non-batch shapes join it, up
to ``max_batch_size`` items; the batch runs as one backend call and each request gets its slice.

Requests of another shape wait for the next batch (they are never padded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..settings import BatchingConfig
from .worker import WorkerThread


@dataclass
class _Pending:
    feed: dict[str, np.ndarray]
    items: int
    key: tuple
    enqueued: float
    future: asyncio.Future = field(repr=False)


def batch_key(feed: dict[str, np.ndarray]) -> tuple:
    """Requests batch together only when names, dtypes and every non-batch dim agree."""
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in feed.items())


class DynamicBatcher:
    """Collects requests on the event loop and runs each batch with ``run_batch`` on ``executor``.

    ``run_batch(feeds) -> Execution`` is the model's blocking call (see ``ModelWorker.run_batch``).
    """

    def __init__(self, run_batch: Callable[[list[dict[str, np.ndarray]]], Any], executor: WorkerThread,
                 config: BatchingConfig) -> None:
        self.run_batch, self.executor, self.config = run_batch, executor, config
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.held: deque[_Pending] = deque()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def submit(self, feed: dict[str, np.ndarray], items: int) -> tuple[dict[str, np.ndarray], float, float]:
        """Queue one request; returns its outputs, queue time and the batch's compute time."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(feed, items, batch_key(feed), time.perf_counter(), future))
        return await future

    async def _serve(self) -> None:
        while True:
            batch = await self._gather()
            if batch:
                await self._execute(batch)

    async def _next(self) -> _Pending:
        return self.held.popleft() if self.held else await self.queue.get()

    async def _gather(self) -> list[_Pending]:
        """The next batch: the oldest request plus compatible ones until full or the delay ends."""
        first = await self._next()
        if first.future.done():  # its request timed out or was cancelled while waiting
            return []
        batch, room = [first], self.config.max_batch_size - first.items
        room = self._take_held(first.key, batch, room)
        deadline = time.perf_counter() + self.config.max_queue_delay_us / 1e6
        while room > 0:
            item = await self._arrival(deadline - time.perf_counter())
            if item is None:
                break
            if item.future.done():
                continue
            if item.key == first.key and item.items <= room:
                batch.append(item)
                room -= item.items
            else:
                self.held.append(item)
        return batch

    def _take_held(self, key: tuple, batch: list[_Pending], room: int) -> int:
        keep: deque[_Pending] = deque()
        for item in self.held:
            if item.key == key and item.items <= room and not item.future.done():
                batch.append(item)
                room -= item.items
            elif not item.future.done():
                keep.append(item)
        self.held = keep
        return room

    async def _arrival(self, timeout: float) -> _Pending | None:
        """A request already queued, or one arriving within ``timeout`` seconds; else None."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            execution = await self.executor.call(self.run_batch, [p.feed for p in batch])
        except Exception as err:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(err)
            return
        for pending, outputs in zip(batch, execution.outputs, strict=True):
            if not pending.future.done():
                pending.future.set_result((outputs, execution.started - pending.enqueued, execution.infer_s))
