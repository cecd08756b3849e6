"""Dynamic batching: the images of requests that arrive within a short wait of each other run
through the model as one batch.

The first image queued opens a batch; others join it until `max_batch` images or `max_wait`
seconds; then the batch runs in the one worker thread that owns the model (never two model
calls at once), while the event loop goes on accepting requests, which queue for the next batch.
Images that need different inference options (a `key` each) run as separate groups of the batch.

Every torch call of the server belongs on that thread (`call`, `run_now`): loading the model and
decoding uploads too. A second thread that runs torch kernels gets an OpenMP team of its own,
and with more OpenMP threads than cores libgomp stops spinning between parallel regions: on
two cores the model ran ~15% slower after the model was loaded or one image decoded in another
thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Batched:
    """One image's output, with the size of the batch it ran in and its times in ms: `wait`
    from queued to run, `run` the batch's model call."""

    value: Any
    batch_size: int
    wait_ms: float
    run_ms: float


@dataclass
class _Job:
    key: Hashable
    item: Any
    future: asyncio.Future
    queued: float


class MicroBatcher:
    """Collects items into batches and runs `run(key, items) -> outputs` (one output per item,
    in order; an exception as an item's output fails that item alone) on a worker thread;
    `observe(batch_size)` is told each batch's size."""

    def __init__(self, run: Callable[[Hashable, list[Any]], Sequence[Any]], *, max_batch: int,
                 max_wait_s: float, observe: Callable[[int], None] | None = None):
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.observe = observe
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcnnlab-model")

    async def start(self) -> None:
        """Start collecting (inside the server's event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop collecting; images still queued get a RuntimeError."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the model's thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def run_now(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the model's thread, from outside the event loop (waits for it)."""
        return self._executor.submit(fn, *args).result()

    async def submit(self, key: Hashable, item: Any) -> Batched:
        """Queue one item and wait for its output."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(key, item, future, time.perf_counter()))
        return await future

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[Hashable, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.key, []).append(job)
            for key, jobs in groups.items():
                jobs = [j for j in jobs if not j.future.done()]  # a client that went away
                if not jobs:
                    continue
                start = time.perf_counter()
                try:
                    outputs = await loop.run_in_executor(self._executor, self.run, key,
                                                         [j.item for j in jobs])
                    if len(outputs) != len(jobs):
                        raise RuntimeError(f"{len(outputs)} outputs for {len(jobs)} inputs")
                except Exception as exc:  # the request fails, the server keeps serving
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                run_ms = (time.perf_counter() - start) * 1000
                if self.observe is not None:
                    self.observe(len(jobs))
                for job, value in zip(jobs, outputs, strict=True):
                    if job.future.done():
                        continue
                    if isinstance(value, Exception):
                        job.future.set_exception(value)
                    else:
                        job.future.set_result(Batched(value, len(jobs),
                                                      (start - job.queued) * 1000, run_ms))
