"""Dynamic batching for ``segzoo serve``: requests that arrive close together share a forward pass.

A request is first *admitted* (at most ``queue_size`` requests are admitted at once, counting
those being read, queued and run; one more is refused with :class:`QueueFullError`, which the
app answers with 503 + ``Retry-After``), then its decoded image is *submitted*. One asyncio task
collects submitted images: it takes the first, waits at most ``max_wait_ms`` for more, up to
``max_batch``, and hands the batch to a thread pool of ``workers`` threads, so the event loop
never runs the model. In the thread, images of the same H x W are stacked into one forward pass
(different sizes run as separate passes, never padded together), and each request's future
gets the logits of its own image, by position.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

RunBatch = Callable[[Sequence[np.ndarray]], list[torch.Tensor]]


class QueueFullError(RuntimeError):
    """More requests are admitted than the queue holds; the client should retry later."""


@dataclass
class _Job:
    image: np.ndarray
    future: asyncio.Future


def group_by_size(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of ``images`` grouped by shape, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    return list(groups.values())


def run_grouped(forward: Callable[[list[np.ndarray]], torch.Tensor],
                images: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Run ``forward`` (list of same-size (H, W, 3) images -> logits (B, K, H, W)) once per size group.

    Returns the logits (K, H, W) of each image, in input order.
    """
    out: list[torch.Tensor | None] = [None] * len(images)
    for indices in group_by_size(images):
        logits = forward([images[i] for i in indices])
        for j, i in enumerate(indices):
            out[i] = logits[j]
    return out  # type: ignore[return-value]


class Batcher:
    """Collects single-image requests into batches and runs them in worker threads.

    Args:
        run_batch: images (each (H, W, 3)) -> their logits (K, H, W), in order; runs in a worker thread.
        max_batch: most images per batch (1 turns batching off).
        max_wait_ms: how long the first image of a batch waits for others.
        queue_size: most requests admitted at once (reading, queued or running).
        workers: batches that run at the same time (threads).
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
        self._queue: asyncio.Queue[_Job] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Start the collecting task (inside the server's event loop)."""
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="segzoo-infer")
        self._task = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        """Finish the queued and running batches, then stop the task and the threads."""
        while self._queue is not None and (not self._queue.empty() or self._running):
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

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

    async def submit(self, image: np.ndarray) -> torch.Tensor:
        """Queue one (H, W, 3) image; returns its logits (K, H, W) once its batch has run."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(image, future))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None and self._slots is not None
        while True:
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
            await self._slots.acquire()
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Job]) -> None:
        assert self._slots is not None
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self.run_batch, [job.image for job in batch])
            self.batches += 1
            self.images += len(batch)
            for job, logits in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(logits)
        except Exception as exc:  # the model failed: every request of the batch gets the error
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
        finally:
            self._slots.release()
