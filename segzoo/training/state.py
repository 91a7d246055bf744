"""RunnerState: what the runner shares with callbacks."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn


@dataclass
class RunnerState:
    """The mediator between the runner and its callbacks (Catalyst's ``RunnerState``).

    Attributes:
        stage: name of the current stage.
        stage_index: index of the current stage in the run.
        epoch: epoch within the stage, 1-based.
        num_epochs: epochs of the current stage.
        global_epoch: epochs run since the start of training, over all stages.
        loader_name: name of the current loader (``"train"``, ``"valid"``, ...).
        loader_len: number of batches of the current loader.
        batch_index: index of the current batch in the loader, 0-based.
        batch_size: number of samples in the current batch.
        need_backward: the loader's name starts with ``"train"``: gradients and optimizer steps.
        input: the current batch as a dict (features (B, C, H, W), targets, ...), on the device.
        output: the model's outputs as a dict (``{"logits": (B, K, H, W)}``).
        loss: named loss tensors of the batch; the one optimized is under ``"loss"``.
        batch_metrics: plain float metrics of the current batch.
        loader_metrics: metrics of the current loader, filled at loader end (exact values).
        epoch_metrics: ``{loader_name: {metric: value}}`` of the current epoch.
        valid_loader: name of the validation loader.
        valid_metrics: the epoch metrics of the validation loader.
        main_metric: the valid metric that selects the best checkpoint.
        minimize_metric: whether a lower ``main_metric`` is better.
        best_valid_metric: best value of ``main_metric`` so far (``None`` before the first epoch).
        is_best_valid: this epoch set a new best.
        logdir: the run's log directory.
        model, criterion, optimizer, scheduler: what is trained (the model possibly wrapped in
            DistributedDataParallel or torch.compile).
        device: where batches and the model live.
        scaler: the fp16 GradScaler or ``None``.
        amp_dtype: autocast dtype or ``None``.
        stop_training: set by a callback (early stopping) to end the stage after this epoch.
        is_main_process: rank 0 (writes logs and checkpoints).
        distributed: running under torch.distributed with more than one process.
        world_size: number of processes.
        exception: the exception being handled in ``on_exception``.
        nonfinite: policy for non-finite losses: ``"raise"`` or ``"skip"``.
        checkpoint_data: extra plain data stored in every checkpoint (``normalization``...).
        skipped_batches: batches skipped under ``nonfinite="skip"``.
        samples: CPU copies of the first valid samples (features, targets, logits) for pictures.
        max_batches: stop each loader after this many batches (``check=True``), or ``None``.
        loggers: the run's logger callbacks by name (Catalyst 19.x ``state.loggers``).
        metrics: Catalyst 19.x view of the metrics (:class:`MetricsView`): ``add_batch_value``,
            ``batch_values``, ``epoch_values``, ``valid_values``.
    """

    logdir: Path | None = None
    stage: str = ""
    stage_index: int = 0
    epoch: int = 0
    num_epochs: int = 0
    global_epoch: int = 0
    loader_name: str = ""
    loader_len: int = 0
    batch_index: int = 0
    batch_size: int = 0
    need_backward: bool = False
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, torch.Tensor] = field(default_factory=dict)
    batch_metrics: dict[str, float] = field(default_factory=dict)
    loader_metrics: dict[str, float] = field(default_factory=dict)
    epoch_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    valid_loader: str = "valid"
    valid_metrics: dict[str, float] = field(default_factory=dict)
    main_metric: str = "loss"
    minimize_metric: bool = True
    best_valid_metric: float | None = None
    is_best_valid: bool = False
    model: nn.Module | None = None
    criterion: Any = None
    optimizer: Any = None
    scheduler: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    scaler: Any = None
    amp_dtype: torch.dtype | None = None
    stop_training: bool = False
    is_main_process: bool = True
    distributed: bool = False
    world_size: int = 1
    exception: BaseException | None = None
    nonfinite: str = "raise"
    checkpoint_data: dict[str, Any] = field(default_factory=dict)
    skipped_batches: int = 0
    samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    max_batches: int | None = None
    loggers: dict[Any, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> MetricsView:
        """Catalyst 19.x ``state.metrics``: the same values seen through its method names."""
        return MetricsView(self)

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the main metric beats ``best`` in the run's direction."""
        if best is None:
            return True
        return value < best if self.minimize_metric else value > best


class MetricsView:
    """Catalyst 19.x's ``state.metrics`` (its MetricManager) over segzoo's own state fields.

    Custom 19.x metric callbacks run unchanged: ``add_batch_value(name=..., value=...)`` writes
    ``state.batch_metrics`` (averaged over the loader, weighted by batch size, like every
    batch metric), and ``epoch_values[loader][name] = value`` in ``on_loader_end`` writes the
    loader's epoch metrics. Both reach the console, ``log.txt``, TensorBoard and checkpoints.

    Args:
        state: the run's state.
    """

    def __init__(self, state: RunnerState) -> None:
        self._state = state

    def add_batch_value(self, name: str | None = None, value: Any = None,
                        metrics_dict: dict[str, Any] | None = None) -> None:
        """Record batch metrics: ``name=value`` and/or every item of ``metrics_dict``.

        Raises:
            TypeError: a value that is not a number or a one-element tensor/array.
        """
        items = dict(metrics_dict or {})
        if name:
            items[name] = value
        for key, val in items.items():
            self._state.batch_metrics[key] = _to_float(key, val)

    @property
    def batch_values(self) -> dict[str, float]:
        """Metrics of the current batch (``state.batch_metrics``)."""
        return self._state.batch_metrics

    @property
    def epoch_values(self) -> dict[str, dict[str, float]]:
        """``{loader: {metric: value}}`` of the current epoch (``state.epoch_metrics``); the
        current loader's dict is filled at its end, before the callbacks' ``on_loader_end``."""
        return self._state.epoch_metrics

    @property
    def valid_values(self) -> dict[str, float]:
        """Epoch metrics of the validation loader (``state.valid_metrics``)."""
        return self._state.valid_metrics

    @property
    def main_metric_value(self) -> float:
        """This epoch's value of the main metric on the validation loader."""
        return self._state.valid_metrics[self._state.main_metric]

    @property
    def best_main_metric_value(self) -> float | None:
        """Best value of the main metric so far (``state.best_valid_metric``)."""
        return self._state.best_valid_metric

    @property
    def is_best(self) -> bool:
        """This epoch set a new best (``state.is_best_valid``)."""
        return self._state.is_best_valid


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.size != 1 if isinstance(value, np.ndarray) else value.numel() != 1:
            raise TypeError(f"metric {name!r}: expected a number, got an array of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"metric {name!r}: expected a number, got {type(value).__name__}")
    return float(value)
