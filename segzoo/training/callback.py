"""Callback base classes, their order, their checkpoint keys and the CALLBACKS registry."""

from __future__ import annotations

import inspect
from enum import IntEnum
from typing import Any

from segzoo.registry import Registry
from segzoo.training.state import RunnerState

# every built-in callback by name, for YAML configs (a read-only Mapping: CALLBACKS[name], dict(CALLBACKS))
CALLBACKS = Registry("callback")
register_callback = CALLBACKS.register
create_callback = CALLBACKS.create
list_callbacks = CALLBACKS.names


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
    resumed run continues where it stopped; full checkpoints file each callback's state under
    its :attr:`state_key`, so the callbacks of a resumed run may come in another order.

    Args:
        order: a :class:`CallbackOrder` value or any int.
    """

    #: ``True`` for a callback that saves the state of the others (the CheckpointCallback): on ``*_end``
    #: events and ``on_exception`` it runs after every other callback, loggers included, whatever its
    #: ``order``, so that it saves the state each of them has at the end of the epoch.
    saves_run_state: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Callback:
        # the constructor arguments, for the default state_key (subclasses need not pass them on)
        obj = super().__new__(cls)
        obj._init_args = (args, kwargs)
        return obj

    def __init__(self, order: int = CallbackOrder.Other) -> None:
        self.order = int(order)

    @property
    def state_key(self) -> str:
        """Key of this callback's :meth:`state_dict` in full checkpoints (Lightning's ``state_key``).

        Default: the class name and the constructor arguments it was created with
        (:meth:`_generate_state_key`), so that ``Counter("a")`` and ``Counter("b")`` keep their own
        state whatever their order. Override it to leave out arguments that may change on resume
        (as :class:`~segzoo.training.callbacks.EarlyStoppingCallback` leaves out ``patience``).
        """
        args, kwargs = getattr(self, "_init_args", ((), {}))
        try:
            bound = inspect.signature(type(self).__init__).bind(self, *args, **kwargs)
            bound.apply_defaults()
            named = dict(list(bound.arguments.items())[1:])  # without self
        except (TypeError, ValueError):  # a signature inspect cannot read: the arguments as given
            named = {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
        return self._generate_state_key(**named)

    def _generate_state_key(self, **kwargs: Any) -> str:
        """``ClassName{'arg': value, ...}`` with values made stable across processes.

        Plain data is written as its repr (dicts sorted), functions and classes as their
        qualified name, other objects as their class name (never an address).
        """
        return f"{type(self).__qualname__}{_stable(kwargs)}"

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
    """A callback that runs before the others on ``*_start`` and after them on ``*_end`` / ``on_exception``
    (but before the CheckpointCallback, which saves every callback's state last)."""

    def __init__(self, order: int = CallbackOrder.External) -> None:
        super().__init__(order)


def _stable(value: Any) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "{" + ", ".join(f"{_stable(k)}: {_stable(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_stable(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return f"<{type(value).__qualname__}>"


def state_keys(callbacks: list[Callback]) -> list[str]:
    """The :attr:`Callback.state_key` of each callback, made unique: repeats get ``#2``, ``#3``... in run order.

    Only identically configured callbacks share a key, so numbering them cannot swap different states.
    """
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        key = cb.state_key
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


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
