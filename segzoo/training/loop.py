"""The walk of a run (:class:`TrainingLoop`: a stage's epochs -> loaders -> batches, firing the callbacks), and its
device helpers.

The loop knows nothing of :class:`~segzoo.training.Runner`: the runner sets up the state and the
callbacks of each stage, then hands the loop its two batch steps (``batch_to_dict`` and ``forward``).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from segzoo.training import distributed as dist_utils
from segzoo.training.callback import Callback, LoggerCallback
from segzoo.training.data_path import batch_normalizer, record_data_wait
from segzoo.training.layout import apply_layout
from segzoo.training.state import RunnerState

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the ``amp`` option: ``True`` is fp16 on CUDA and bf16 elsewhere."""
    if amp is False or amp is None:
        return None
    key = amp if isinstance(amp, str) else ("fp16" if device.type == "cuda" else "bf16")
    if key not in AMP_DTYPES:
        raise ValueError(f"amp must be False, True, 'fp16' or 'bf16', got {amp!r}")
    return AMP_DTYPES[key]


def move_to(value: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move tensors (also inside dicts) to ``device`` without blocking; 4-D floats optionally channels_last.

    Non-blocking copies overlap with compute only from pinned memory: use
    ``DataLoader(..., pin_memory=True)`` when training on CUDA.
    """
    if isinstance(value, torch.Tensor):
        value = value.to(device, non_blocking=True)
        if channels_last and value.dim() == 4 and value.is_floating_point():
            value = value.contiguous(memory_format=torch.channels_last)
        return value
    if isinstance(value, Mapping):
        return {k: move_to(v, device, channels_last) for k, v in value.items()}
    return value


def prepare_model(model: nn.Module, state: RunnerState, compile: bool | dict = False) -> nn.Module:
    """``model`` on ``state.device`` in the layout the setting ``state.channels_last`` asks for
    (:func:`segzoo.training.layout.apply_layout`), in DDP when distributed, compiled when ``compile``
    (a dict gives ``torch.compile``'s options)."""
    model = model.to(state.device)
    if apply_layout(model, state):
        model = model.to(memory_format=torch.channels_last)
    if state.distributed:
        ids = [state.device.index] if state.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        model = torch.compile(model, **(compile if isinstance(compile, dict) else {}))
    return model


def _dynamic(callback: Callback) -> bool:
    """Whether ``callback`` computes its attributes (``__getattribute__`` / ``__getattr__``): looked up at each call."""
    kind = type(callback)
    return kind.__getattribute__ is not object.__getattribute__ or hasattr(kind, "__getattr__")


def _overrides(callback: Callback, event: str) -> bool:
    """Whether ``callback`` does something on ``event`` (its hook is not :class:`Callback`'s empty one)."""
    hook = getattr(callback, event)
    return getattr(hook, "__func__", hook) is not getattr(Callback, event)


def _lookup(callback: Callback, event: str) -> Any:
    return lambda state: getattr(callback, event)(state)


def event_calls(callbacks: list[Callback], event: str) -> list[Any]:
    """The hooks ``event`` calls, in order: loggers first on ``*_start``, last on ``*_end`` / ``on_exception``,
    except that callbacks with :attr:`~segzoo.training.Callback.saves_run_state` (the CheckpointCallback)
    come after all others, loggers included, on ``*_end`` / ``on_exception``: they save the others'
    state as the event left it.

    Callbacks that leave the event to :class:`Callback`'s empty hook are left out, and the others'
    hooks are bound once, except for callbacks that compute their attributes: those are asked
    for the hook at every call, as before.
    """
    loggers = [c for c in callbacks if isinstance(c, LoggerCallback)]
    others = [c for c in callbacks if not isinstance(c, LoggerCallback)]
    if event.endswith("_start"):
        ordered = loggers + others
    else:
        ordered = others + loggers
        ordered = [c for c in ordered if not c.saves_run_state] + [c for c in ordered if c.saves_run_state]
    return [_lookup(cb, event) if _dynamic(cb) else getattr(cb, event)
            for cb in ordered if _dynamic(cb) or _overrides(cb, event)]


class Hooks:
    """The run's callbacks with the calls of each event worked out once, not on every batch.

    The list is read again when its length changes (a callback added or removed meanwhile).

    Args:
        callbacks: the callbacks in run order (kept by reference).
    """

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks
        self._size = -1
        self._calls: dict[str, list[Any]] = {}

    def __call__(self, event: str, state: RunnerState) -> None:
        """Call ``event`` on the callbacks that implement it."""
        if len(self.callbacks) != self._size:
            self._size, self._calls = len(self.callbacks), {}
        calls = self._calls.get(event)
        if calls is None:
            calls = self._calls[event] = event_calls(self.callbacks, event)
        for call in calls:
            call(state)


def as_hooks(callbacks: list[Callback] | Hooks) -> Hooks:
    """``callbacks`` as :class:`Hooks` (a Hooks is returned as is)."""
    return callbacks if isinstance(callbacks, Hooks) else Hooks(callbacks)


def _batch_size(batch: Mapping[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return 1


class TrainingLoop:
    """The walk of one run: a stage's epochs -> loaders (dict order) -> batches, firing the callbacks' events.

    It owns every step of the walk and the bookkeeping between them (``state.epoch``, ``loader_name``,
    ``batch_index``..., the loader metrics, the best epoch); what a batch is and how the model runs on it
    are the two functions it is given.

    Args:
        state: the run's state, set up for the run (device, model, settings); the loop writes where it is.
        batch_to_dict: one loader item -> the ``state.input`` dict (e.g. features (B, C, H, W), targets).
        forward: ``(state, model)`` -> the ``state.output`` dict (e.g. logits (B, K, H, W)).
        loaders: ordered ``name -> loader``.
    """

    def __init__(self, state: RunnerState, batch_to_dict: Callable[[Any], dict[str, Any]],
                 forward: Callable[[RunnerState, nn.Module], dict[str, Any]], loaders: Mapping[str, Iterable]) -> None:
        self.state = state
        self.batch_to_dict = batch_to_dict
        self.forward = forward
        self.loaders = loaders

    def run_stage(self, callbacks: list[Callback] | Hooks, start_epoch: int = 1) -> None:
        """Epochs ``start_epoch..state.num_epochs`` of the current stage (``state.stage...`` set), between its
        ``on_stage_start`` and ``on_stage_end``; ends early when a callback sets ``state.stop_training``.

        Raises:
            BaseException: what a step raised, after ``on_exception`` (``state.exception`` set).
        """
        state, hooks = self.state, as_hooks(callbacks)
        state.epoch = start_epoch - 1
        state.stop_training = False
        try:
            hooks("on_stage_start", state)
            for epoch in range(start_epoch, state.num_epochs + 1):
                state.epoch = epoch
                self.run_epoch(hooks)
                if state.stop_training:
                    break
            hooks("on_stage_end", state)
        except BaseException as exc:
            self._failed(exc, hooks)
            raise

    def run_infer(self, callbacks: list[Callback] | Hooks) -> None:
        """The one stage and epoch of :meth:`~segzoo.training.Runner.infer`: every loader without gradients.

        Raises:
            BaseException: what a step raised, after ``on_exception`` (``state.exception`` set).
        """
        state, hooks = self.state, as_hooks(callbacks)
        try:
            hooks("on_stage_start", state)
            hooks("on_epoch_start", state)
            for state.loader_name, loader in self.loaders.items():
                state.need_backward = False
                self.run_loader(loader, hooks)
            hooks("on_epoch_end", state)
            hooks("on_stage_end", state)
        except BaseException as exc:
            self._failed(exc, hooks)
            raise

    def _failed(self, exc: BaseException, hooks: Hooks) -> None:
        """``on_exception`` with ``state.exception`` set (the caller re-raises ``exc``)."""
        self.state.exception = exc
        hooks("on_exception", self.state)

    def run_epoch(self, callbacks: list[Callback] | Hooks) -> None:
        """One training epoch (``state.epoch`` set): every loader in order, then the best-epoch bookkeeping.

        Raises:
            KeyError: ``main_metric`` is not among the valid loader's metrics.
        """
        state, hooks = self.state, as_hooks(callbacks)
        state.global_epoch += 1
        state.epoch_metrics = {}
        hooks("on_epoch_start", state)
        for state.loader_name, loader in self.loaders.items():
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(state.global_epoch)
            state.need_backward = state.loader_name.startswith("train")
            self.run_loader(loader, hooks)
        state.valid_metrics = state.epoch_metrics[state.valid_loader]
        if state.main_metric not in state.valid_metrics:
            raise KeyError(f"main_metric {state.main_metric!r} is not among the valid metrics "
                           f"{sorted(state.valid_metrics)}; add its callback or choose another")
        state.best.update(state.valid_metrics[state.main_metric], f"{state.stage}.{state.epoch}")
        hooks("on_epoch_end", state)

    def run_loader(self, loader: Iterable, callbacks: list[Callback] | Hooks) -> None:
        """One pass over ``loader`` (``state.loader_name`` and ``need_backward`` set): batches, then loader metrics.

        Batch metrics are averaged weighted by batch size (and summed over processes) into
        ``state.loader_metrics``, which is also ``state.epoch_metrics[loader_name]``.
        """
        state, hooks = self.state, as_hooks(callbacks)
        state.loader_len = len(loader) if hasattr(loader, "__len__") else 0
        if state.max_batches is not None and hasattr(loader, "__len__"):
            state.loader_len = min(state.loader_len, state.max_batches)
        state.model.train(state.need_backward)
        state.loader_metrics = {}
        state.epoch_metrics[state.loader_name] = state.loader_metrics
        totals: dict[str, float] = {}
        count = 0
        autocast = (torch.autocast(device_type=state.device.type, dtype=state.amp_dtype)
                    if state.amp_dtype is not None else contextlib.nullcontext())
        hooks("on_loader_start", state)
        normalizer = batch_normalizer(loader, state.device)
        waited, first, steps, started = 0.0, 0.0, 0, time.perf_counter()
        ready = started  # the end of the previous step (the pass's start for the first batch: worker start-up counts)
        with torch.set_grad_enabled(state.need_backward):
            for state.batch_index, batch in enumerate(loader):
                waited += time.perf_counter() - ready
                first = waited if not steps else first
                self.run_batch(batch, hooks, autocast, normalizer)
                for k, v in state.batch_metrics.items():
                    totals[k] = totals.get(k, 0.0) + v * state.batch_size
                count += state.batch_size
                steps += 1
                if state.max_batches is not None and state.batch_index + 1 >= state.max_batches:
                    break
                ready = time.perf_counter()
        elapsed = time.perf_counter() - started
        if state.distributed:
            keys = sorted(totals)
            packed = dist_utils.all_reduce_sum(torch.tensor([totals[k] for k in keys] + [count],
                                                            dtype=torch.float64), state)
            totals, count = dict(zip(keys, packed[:-1].tolist())), packed[-1].item()
        state.loader_metrics = {k: v / max(count, 1) for k, v in totals.items()}
        # the same dict: what on_loader_end callbacks add (Catalyst's state.metrics.epoch_values) is kept
        state.epoch_metrics[state.loader_name] = state.loader_metrics
        hooks("on_loader_end", state)
        if state.need_backward and steps:
            record_data_wait(state, waited, elapsed, steps, first, getattr(loader, "num_workers", None))

    def run_batch(self, batch: Any, hooks: Hooks, autocast: Any, normalizer: Callable | None = None) -> None:
        """One batch (``state.batch_index`` set): to the device (uint8 features normalized there by ``normalizer``,
        see :func:`batch_normalizer`), ``on_batch_start``, forward under ``autocast``, ``on_batch_end`` (where the
        callbacks compute the loss, step the optimizer and measure)."""
        state = self.state
        state.input = device_input(self.batch_to_dict(batch), state, normalizer)
        state.batch_size = _batch_size(state.input)
        state.loss, state.batch_metrics = {}, {}
        hooks("on_batch_start", state)
        with autocast:
            state.output = self.forward(state, state.model)
        hooks("on_batch_end", state)


def device_input(batch: dict[str, Any], state: RunnerState, normalizer: Callable | None = None) -> dict[str, Any]:
    """A batch dict on ``state.device`` (:func:`move_to`), its uint8 ``features`` (B, 3, H, W) normalized there
    by ``normalizer`` (:func:`batch_normalizer`) into float32, in the layout ``state.channels_last`` asks for."""
    moved = move_to(batch, state.device, state.channels_last)
    x = moved.get("features") if normalizer is not None and isinstance(moved, dict) else None
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4:
        moved["features"] = move_to(normalizer(x), state.device, state.channels_last)
    return moved
