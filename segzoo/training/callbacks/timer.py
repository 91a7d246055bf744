"""TimerCallback: per-batch data-loading and compute time as metrics (``train(timeit=True)``)."""

from __future__ import annotations

import time

import torch

from segzoo.training.callback import CallbackOrder, LoggerCallback, register_callback
from segzoo.training.state import RunnerState


@register_callback("TimerCallback")
class TimerCallback(LoggerCallback):
    """Record ``_timers/data_time`` and ``_timers/batch_time`` (seconds) of every batch.

    ``data_time`` is the wait for the loader between the end of the previous batch and the
    start of this one; ``batch_time`` runs from the start of the batch to the end of its last
    non-logger callback: forward, loss, backward, optimizer step and metrics. On CUDA the
    device is synchronized at both ends so that queued kernels are counted. Both are batch
    metrics, so their loader means appear in the console, ``log.txt`` and TensorBoard.
    As a logger it runs before every other callback on ``on_batch_start`` and after the
    non-logger callbacks on ``on_batch_end``.
    """

    def __init__(self) -> None:
        super().__init__(CallbackOrder.Unknown)
        self._batch_start = 0.0
        self._last_end = 0.0

    @staticmethod
    def _now(state: RunnerState) -> float:
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        return time.perf_counter()

    def on_loader_start(self, state: RunnerState) -> None:
        self._last_end = self._now(state)

    def on_batch_start(self, state: RunnerState) -> None:
        self._batch_start = self._now(state)
        state.batch_metrics["_timers/data_time"] = self._batch_start - self._last_end

    def on_batch_end(self, state: RunnerState) -> None:
        self._last_end = self._now(state)
        state.batch_metrics["_timers/batch_time"] = self._last_end - self._batch_start
