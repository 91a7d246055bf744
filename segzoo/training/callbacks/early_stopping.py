"""Early stopping."""

from __future__ import annotations

from typing import Any

from segzoo.training.callback import Callback, CallbackOrder, register_callback
from segzoo.training.state import RunnerState


@register_callback("EarlyStoppingCallback")
class EarlyStoppingCallback(Callback):
    """Stop the stage when the valid ``metric`` has not improved for ``patience`` epochs.

    An epoch improves when the metric beats the best so far by more than ``min_delta`` in the
    chosen direction (Catalyst compared maximized metrics with the wrong sign). ``patience=1``
    stops after the first epoch that does not improve — never after the first epoch itself.

    Args:
        patience: epochs without improvement before stopping (>= 1).
        metric: valid metric to watch.
        minimize: lower is better.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(self, patience: int, metric: str = "loss", minimize: bool = True, min_delta: float = 1e-6) -> None:
        super().__init__(CallbackOrder.External)
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        self.patience, self.metric, self.minimize, self.min_delta = patience, metric, minimize, min_delta
        self.best: float | None = None
        self.wait = 0

    def on_stage_start(self, state: RunnerState) -> None:
        if state.epoch == 0:  # a fresh stage, not a resumed one
            self.best, self.wait = None, 0

    def on_epoch_end(self, state: RunnerState) -> None:
        if self.metric not in state.valid_metrics:
            raise KeyError(f"early stopping metric {self.metric!r} not among valid metrics "
                           f"{sorted(state.valid_metrics)}")
        value = state.valid_metrics[self.metric]
        if self.best is None:
            improved = True
        elif self.minimize:
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                state.stop_training = True

    @property
    def state_key(self) -> str:
        """Class name, ``metric`` and ``minimize``: a resumed run may change ``patience`` or ``min_delta``."""
        return self._generate_state_key(metric=self.metric, minimize=self.minimize)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.wait = state_dict["best"], state_dict["wait"]
