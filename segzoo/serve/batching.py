"""Dynamic batching for ``segzoo serve``: requests that arrive close together share a forward pass.

A request is first *admitted* (at most ``queue_size`` requests are admitted at once, counting
those being read, queued and run; one more is refused with :class:`QueueFullError`, which the
app answers with 503 + ``Retry-After``), then its decoded image is *submitted*. One asyncio task
forms the batches, and forms each one only when one of the ``workers`` threads is free to run it:
it then takes the first queued item, waits at most ``max_wait_ms`` for more, up to ``max_batch``
(items already queued are taken without waiting), and hands the batch to that thread, so the
event loop never runs the model. Forming a batch before a worker is free would fill it with the
few requests that arrived in the first ``max_wait_ms`` and leave the rest for later, half-empty
batches. In the thread, images of the same H x W are stacked into one forward pass (different
sizes run as separate passes, never padded together, see :func:`run_grouped`), and each
request's future gets its own result, by position. When a batch fails, each of its items is run
again alone, so an item that fails (a corrupt input, an image the model cannot take) fails only
its own request.

:meth:`Batcher.abandon` (``segzoo serve --shutdown-timeout`` expired) fails every item not
answered yet with :class:`ShuttingDownError` and stops waiting for the batches still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

RunBatch = Callable[[Sequence[Any]], Sequence[Any]]


class QueueFullError(RuntimeError):
    """More requests are admitted than the queue holds; the client should retry later."""


class ShuttingDownError(RuntimeError):
    """The server stopped before this item's batch could be answered (see :meth:`Batcher.abandon`)."""


@dataclass(eq=False)
class _Job:
    item: Any
    future: asyncio.Future


def group_by_size(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices of equal ``keys`` (e.g. image shapes) grouped, groups in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_grouped(forward: Callable[[list[Any]], Sequence[Any]], items: Sequence[Any],
                key: Callable[[Any], Hashable]) -> list[Any]:
    """Run ``forward`` once per group of ``items`` with equal ``key(item)`` (e.g. the image's H x W).

    ``forward`` maps a list of items of one group to one result per item, in order; returns
    the result of each item, in input order.
    """
    out: list[Any] = [None] * len(items)
    for indices in group_by_size([key(item) for item in items]):
        results = forward([items[i] for i in indices])
        for i, result in zip(indices, results):
            out[i] = result
    return out


class Batcher:
    """Collects single-item requests into batches and runs them in worker threads.

    Args:
        run_batch: items -> one result per item, in order; runs in a worker thread.
        max_batch: most items per batch (1 turns batching off).
        max_wait_ms: how long a free worker waits for a batch to fill once its first item is there.
        queue_size: most requests admitted at once (reading, queued or running).
        workers: batches that run at the same time (threads).

    Attributes ``batches``, ``images`` and ``busy_seconds`` (summed time the workers spent in
    ``run_batch``) count what has run; ``/health`` reports them.
    """

    def __init__(self, run_batch: RunBatch, max_batch: int = 8, max_wait_ms: float = 5.0, queue_size: int = 64,
                 workers: int = 1) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.workers = workers
        self.admitted = 0
        self.batches = 0
        self.images = 0
        self.busy_seconds = 0.0
        self._pending = 0  # submitted, result not yet set
        self._queue: asyncio.Queue[_Job] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._jobs: set[_Job] = set()  # submitted, result not yet set
        self._abandoned = False
        self._lock = threading.Lock()
        self._in_threads = 0

    @property
    def running(self) -> int:
        """Worker threads inside ``run_batch`` now (after :meth:`abandon`: the batches left running)."""
        with self._lock:
            return self._in_threads

    async def start(self) -> None:
        """Start the collecting task (inside the server's event loop)."""
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="segzoo-infer")
        self._task = asyncio.create_task(self._collect())

    async def stop(self, timeout: float | None = None) -> None:
        """Finish every submitted item (queued, being batched or running), then stop the task and the threads.

        After ``timeout`` seconds (``None``: no limit), :meth:`abandon` what is left: the
        threads still running a batch are not waited for (see :attr:`running`).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while (self._pending or self._running) and not self._abandoned:
            if deadline is not None and loop.time() >= deadline:
                self.abandon()
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=not self._abandoned, cancel_futures=True)

    def abandon(self) -> None:
        """Fail every submitted item not answered yet with :class:`ShuttingDownError`; accept no more.

        Batches already in a worker thread cannot be interrupted: they run on, and their results
        are dropped (a process that must exit now ends without waiting for them).
        """
        self._abandoned = True
        for job in list(self._jobs):
            if not job.future.done():
                job.future.set_exception(ShuttingDownError("the server is shutting down; this request was "
                                                           "not answered in time (segzoo serve --shutdown-timeout)"))
        if self._task is not None:
            self._task.cancel()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of ``queue_size`` places for the duration of a request.

        Raises:
            QueueFullError: all places are taken.
        """
        if self.admitted >= self.queue_size:
            raise QueueFullError(f"the server is busy ({self.admitted} requests in progress, the queue holds "
                                 f"{self.queue_size}); retry later")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def submit(self, item: Any) -> Any:
        """Queue one item (for the app: a decoded image and its options); returns its result once its batch has run."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self._abandoned:
            raise ShuttingDownError("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        job = _Job(item, future)
        self._pending += 1
        self._jobs.add(job)
        future.add_done_callback(lambda _: self._jobs.discard(job))
        self._queue.put_nowait(job)
        return await future

    async def _next_batch(self) -> list[_Job]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:  # noqa: UP041  (not the builtin before Python 3.11)
                break
        return batch

    async def _collect(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # a worker is free: only now form its batch
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _timed(self, items: list[Any]) -> tuple[Sequence[Any], float]:
        with self._lock:
            self._in_threads += 1
        start = time.perf_counter()
        try:
            results = self.run_batch(items)
        finally:
            with self._lock:
                self._in_threads -= 1
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        return results, time.perf_counter() - start

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        """Run ``jobs`` as one batch and answer each; raises what ``run_batch`` raised."""
        loop = asyncio.get_running_loop()
        results, seconds = await loop.run_in_executor(self._executor, self._timed, [job.item for job in jobs])
        self.batches += 1
        self.images += len(jobs)
        self.busy_seconds += seconds
        for job, result in zip(jobs, results):
            if not job.future.done():
                job.future.set_result(result)

    async def _run(self, batch: list[_Job]) -> None:
        assert self._slots is not None
        try:
            try:
                await self._run_jobs(batch)
            except Exception:
                if len(batch) == 1:
                    raise
                # one item may have failed the batch: run each alone, so only the failing ones get an error
                for job in batch:
                    if job.future.done() or self._abandoned:
                        continue
                    try:
                        await self._run_jobs([job])
                    except Exception as alone:  # this item fails on its own
                        if not job.future.done():
                            job.future.set_exception(alone)
        except Exception as exc:  # a batch of one failed
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
        finally:
            self._pending -= len(batch)
            self._slots.release()
