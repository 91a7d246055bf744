"""Learning-rate scheduler callback."""

from __future__ import annotations

from torch.optim import lr_scheduler

from segzoo.training.callback import Callback, CallbackOrder, register_callback
from segzoo.training.state import RunnerState

_BATCH_SCHEDULERS = (lr_scheduler.OneCycleLR, lr_scheduler.CyclicLR)


@register_callback("SchedulerCallback")
class SchedulerCallback(Callback):
    """Step ``state.scheduler`` after each train batch (``mode="batch"``) or each epoch (``"epoch"``).

    ``ReduceLROnPlateau`` steps on the valid metric ``reduce_metric``. ``mode=None`` picks
    ``"batch"`` for OneCycleLR / CyclicLR and ``"epoch"`` otherwise. The current learning rate
    is logged as the train loader's ``lr`` metric.

    Args:
        scheduler_key: key when ``state.scheduler`` is a dict.
        mode: ``"batch"``, ``"epoch"`` or ``None``.
        reduce_metric: valid metric for ReduceLROnPlateau.
    """

    def __init__(self, scheduler_key: str | None = None, mode: str | None = None,
                 reduce_metric: str = "loss") -> None:
        super().__init__(CallbackOrder.Scheduler)
        if mode not in (None, "batch", "epoch"):
            raise ValueError(f"mode must be 'batch', 'epoch' or None, got {mode!r}")
        self.scheduler_key, self.mode, self.reduce_metric = scheduler_key, mode, reduce_metric

    def _scheduler(self, state: RunnerState):
        s = state.scheduler
        return s[self.scheduler_key] if isinstance(s, dict) else s

    def _mode(self, scheduler) -> str:
        return self.mode or ("batch" if isinstance(scheduler, _BATCH_SCHEDULERS) else "epoch")

    def on_batch_end(self, state: RunnerState) -> None:
        scheduler = self._scheduler(state)
        if scheduler is None or not state.need_backward:
            return
        state.batch_metrics["lr"] = float(scheduler.optimizer.param_groups[0]["lr"])
        if self._mode(scheduler) == "batch":
            scheduler.step()

    def on_epoch_end(self, state: RunnerState) -> None:
        scheduler = self._scheduler(state)
        if scheduler is None or self._mode(scheduler) != "epoch":
            return
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            if self.reduce_metric not in state.valid_metrics:
                raise KeyError(f"ReduceLROnPlateau metric {self.reduce_metric!r} not among valid metrics "
                               f"{sorted(state.valid_metrics)}")
            scheduler.step(state.valid_metrics[self.reduce_metric])
        else:
            scheduler.step()
