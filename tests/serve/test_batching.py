"""The batcher of segzoo serve in one event loop, without HTTP: batch forming, results by position, stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from segzoo.serve.batching import Batcher, ShuttingDownError, run_grouped


def test_run_grouped_runs_each_size_once_and_keeps_the_order():
    calls = []

    def forward(group):
        calls.append(list(group))
        return [f"r{item}" for item in group]

    items = ["a1", "bb1", "a2", "cccc", "bb2", "a3"]
    assert run_grouped(forward, items, len) == [f"r{item}" for item in items]
    assert calls == [["a1", "a2", "a3"], ["bb1", "bb2"], ["cccc"]]


async def _load(batcher: Batcher, arrivals: list[tuple[float, int]]) -> list[int]:
    await batcher.start()

    async def one(delay: float, item: int) -> int:
        await asyncio.sleep(delay)
        return await batcher.submit(item)

    try:
        return await asyncio.gather(*(one(d, i) for d, i in arrivals))
    finally:
        await batcher.stop()


def test_a_batch_is_formed_when_a_worker_is_free_not_before():
    """Requests arriving one by one while a batch runs all share the next batch.

    Forming the next batch while the worker was busy gave it only the first arrival (the wait
    is 1 ms, they arrive 10 ms apart), then half-empty batches after it.
    """
    sizes = []

    def run(items):
        sizes.append(len(items))
        time.sleep(0.3)
        return [i * 10 for i in items]

    batcher = Batcher(run, max_batch=8, max_wait_ms=1, workers=1)
    arrivals = [(0.0, 0)] + [(0.03 + 0.01 * k, k + 1) for k in range(8)]
    results = asyncio.run(_load(batcher, arrivals))
    assert results == [i * 10 for i in range(9)]  # each request gets its own result
    assert sizes == [1, 8]
    assert (batcher.batches, batcher.images) == (2, 9) and batcher.busy_seconds >= 0.6


def test_max_batch_and_workers_are_respected():
    active, most, sizes = [0], [0], []

    def run(items):
        active[0] += 1
        most[0] = max(most[0], active[0])
        sizes.append(len(items))
        time.sleep(0.05)
        active[0] -= 1
        return [-i for i in items]

    batcher = Batcher(run, max_batch=3, max_wait_ms=5, workers=2)
    results = asyncio.run(_load(batcher, [(0.0, i) for i in range(10)]))
    assert results == [-i for i in range(10)]
    assert max(sizes) == 3 and sum(sizes) == 10 and most[0] == 2


def test_a_failing_item_fails_only_its_own_request_and_its_batch_is_answered():
    """Issue 19.3: one bad item failed every request batched with it, of any size."""
    calls = []

    def run(items):
        calls.append(list(items))
        return run_grouped(forward, items, len)

    def forward(group):  # groups of equal length, as images of equal H x W
        if "bad" in group:
            raise RuntimeError("model failed")
        return [item.upper() for item in group]

    async def scenario():
        batcher = Batcher(run, max_batch=4, max_wait_ms=100, workers=1)
        await batcher.start()
        try:
            first = await asyncio.gather(*(batcher.submit(i) for i in ("bad", "abc", "x", "y")),
                                         return_exceptions=True)
            second = await batcher.submit("ok")
        finally:
            await batcher.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first[0], RuntimeError) and "model failed" in str(first[0])
    assert first[1:] == ["ABC", "X", "Y"]  # same size as "bad" ("abc") and other sizes alike
    assert second == "OK"
    assert calls[0] == ["bad", "abc", "x", "y"] and sorted(map(tuple, calls[1:5])) == [
        ("abc",), ("bad",), ("x",), ("y",)]  # the batch, then each item alone


def test_a_batch_that_fails_on_its_own_is_not_retried_item_by_item_when_single():
    calls = []

    def run(items):
        calls.append(list(items))
        raise ValueError("broken")

    async def scenario():
        batcher = Batcher(run, max_batch=4, max_wait_ms=1, workers=1)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.submit(1), return_exceptions=True)
        finally:
            await batcher.stop()

    (result,) = asyncio.run(scenario())
    assert isinstance(result, ValueError) and calls == [[1]]


def test_stop_with_a_timeout_abandons_a_running_batch():
    """Issue 19.5: the server waited for the running batch whatever --shutdown-timeout said."""
    def run(items):
        time.sleep(1.5)
        return items

    async def scenario():
        batcher = Batcher(run, max_batch=1, max_wait_ms=1, workers=1)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.1)  # the first runs, two are queued
        start = time.monotonic()
        await batcher.stop(timeout=0.2)
        took = time.monotonic() - start
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return took, results, batcher.running

    took, results, running = asyncio.run(scenario())
    assert took < 1.0
    assert all(isinstance(r, ShuttingDownError) for r in results), results
    assert running == 1  # the thread could not be interrupted; the caller decides not to wait


def test_stop_answers_items_still_being_batched():
    async def scenario():
        batcher = Batcher(lambda items: [i + 1 for i in items], max_batch=8, max_wait_ms=300, workers=1)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.02)  # the three wait in a forming batch
        await batcher.stop()
        return [t.result() if t.done() else None for t in tasks]

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_submit_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(Batcher(lambda items: items).submit(1))


def test_workers_share_the_cores_unless_threads_are_given(monkeypatch):
    """N model threads with torch's default of one thread per core each would oversubscribe the cores."""
    import torch

    from segzoo.cli.serve import threads_per_worker

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert threads_per_worker(1) is None  # torch's default stays
    assert [threads_per_worker(n) for n in (2, 3, 4, 8)] == [2, 1, 1, 1]
