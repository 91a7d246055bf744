"""Optuna pruning for ``segzoo tune``: report each epoch's valid main metric to the running trial.

:func:`reporting_to` names the trial (``segzoo tune`` wraps each trial's training in it);
:class:`OptunaPruningCallback`, which ``segzoo tune`` adds to each trial's config, reports to it and
stops a run its pruner prunes. Optuna itself is never imported here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from segzoo.training.callback import Callback, CallbackOrder, register_callback
from segzoo.training.state import RunnerState

_TRIAL: dict[str, Any] = {"trial": None}


@contextlib.contextmanager
def reporting_to(trial: Any) -> Iterator[None]:
    """Within the block, :class:`OptunaPruningCallback` reports to ``trial`` (an ``optuna.Trial``)."""
    previous, _TRIAL["trial"] = _TRIAL["trial"], trial
    try:
        yield
    finally:
        _TRIAL["trial"] = previous


class TrialPrunedStop(Exception):
    """Raised by :func:`raise_if_pruned` after a run that Optuna pruned (its stage stopped early)."""


@register_callback("OptunaPruningCallback")
class OptunaPruningCallback(Callback):
    """Report the valid main metric to the Optuna trial of ``segzoo tune`` at each epoch end, and stop a
    trial its pruner prunes: the epoch is completed (checkpoints, logs), then training ends.

    ``segzoo tune`` adds it to each trial's config; outside a trial (a trial's config trained again
    with ``segzoo train``) it does nothing. After training, :attr:`pruned_at` holds the global epoch
    the trial was pruned at (``None``: not pruned).
    """

    def __init__(self) -> None:
        super().__init__(CallbackOrder.Other)
        self.pruned_at: int | None = None

    def on_stage_start(self, state: RunnerState) -> None:
        """A pruned trial starts no further stage."""
        if self.pruned_at is not None:
            state.stop_training = True

    def on_epoch_start(self, state: RunnerState) -> None:
        """A pruned trial trains no further epoch (of a later stage)."""
        if self.pruned_at is not None:
            raise TrialPrunedStop(f"pruned at epoch {self.pruned_at}")

    def on_epoch_end(self, state: RunnerState) -> None:
        """Report ``state.valid_metrics[main_metric]`` at step ``global_epoch``; ask the pruner."""
        trial = _TRIAL["trial"]
        if trial is None or not state.is_main_process:
            return
        value = state.valid_metrics.get(state.main_metric)
        if value is None or not math.isfinite(value):
            return
        trial.report(float(value), state.global_epoch)
        if trial.should_prune():
            self.pruned_at = state.global_epoch
            state.stop_training = True
