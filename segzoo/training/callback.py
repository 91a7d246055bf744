"""Callback base classes and their order."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from segzoo.training.state import RunnerState


class CallbackOrder(IntEnum):
    """When a callback runs relative to others (lower first; ties keep insertion order)."""

    Unknown = -100
    Internal = 0
    Criterion = 20
    Optimizer = 40
    Scheduler = 60
    Metric = 80
    External = 100
    Other = 200


class Callback:
    """Base class: override the events you need; every hook receives the :class:`RunnerState`.

    Events: ``on_stage_start/end``, ``on_epoch_start/end``, ``on_loader_start/end``,
    ``on_batch_start/end`` and ``on_exception`` (the error is in ``state.exception``).
    Stateful callbacks override :meth:`state_dict` / :meth:`load_state_dict` so that a
    resumed run continues where it stopped.

    Args:
        order: a :class:`CallbackOrder` value or any int.
    """

    def __init__(self, order: int = CallbackOrder.Other) -> None:
        self.order = int(order)

    def on_stage_start(self, state: RunnerState) -> None:
        """Called once at the start of each stage."""

    def on_stage_end(self, state: RunnerState) -> None:
        """Called once at the end of each stage."""

    def on_epoch_start(self, state: RunnerState) -> None:
        """Called at the start of each epoch."""

    def on_epoch_end(self, state: RunnerState) -> None:
        """Called at the end of each epoch, after every loader (``state.valid_metrics`` is set)."""

    def on_loader_start(self, state: RunnerState) -> None:
        """Called before the first batch of each loader."""

    def on_loader_end(self, state: RunnerState) -> None:
        """Called after the last batch of each loader (batch-metric means are in ``state.loader_metrics``)."""

    def on_batch_start(self, state: RunnerState) -> None:
        """Called before the model's forward (``state.input`` is set)."""

    def on_batch_end(self, state: RunnerState) -> None:
        """Called after the model's forward (``state.output`` is set)."""

    def on_exception(self, state: RunnerState) -> None:
        """Called when training fails or is interrupted (``state.exception``)."""

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state to store in full checkpoints (default: none)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class LoggerCallback(Callback):
    """A callback that runs before the others on ``*_start`` and after them on ``*_end`` / ``on_exception``."""

    def __init__(self, order: int = CallbackOrder.External) -> None:
        super().__init__(order)


def sort_callbacks(callbacks: list[Callback]) -> list[Callback]:
    """Stable sort by ``order`` (ties keep the given order)."""
    return sorted(callbacks, key=lambda c: c.order)


def outputs_and_targets(callback: Callback, state: RunnerState) -> tuple[Any, Any]:
    """``(state.output[callback.output_key], state.input[callback.input_key])`` for a callback with those keys.

    Raises:
        KeyError: naming the callback, the missing key and the keys there are.
    """
    found = []
    for mapping, key, what in ((state.output, callback.output_key, "model output"),
                               (state.input, callback.input_key, "batch key")):
        if key not in mapping:
            raise KeyError(f"{type(callback).__name__}: no {what} {key!r}; available: {sorted(mapping)}")
        found.append(mapping[key])
    return found[0], found[1]
