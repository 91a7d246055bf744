"""RunnerState: what the runner shares with callbacks, grouped by how long each value lives."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn


@dataclass
class RunInfo:
    """Set once when :meth:`~segzoo.training.Runner.train` / ``infer`` starts; fixed for the run.

    Attributes:
        logdir: the run's log directory (``None`` in ``infer``).
        model: the model being run (possibly wrapped in DistributedDataParallel or torch.compile).
        device: where batches and the model live.
        amp_dtype: autocast dtype or ``None``.
        channels_last: the model and 4-D float inputs are in channels_last memory format.
        scaler: the fp16 GradScaler or ``None``.
        is_main_process: rank 0 (writes logs and checkpoints).
        distributed: running under torch.distributed with more than one process.
        world_size: number of processes.
        nonfinite: policy for non-finite losses: ``"raise"`` or ``"skip"``.
        max_batches: stop each loader after this many batches (``check=True``), or ``None``.
        checkpoint_data: extra plain data stored in every checkpoint (``normalization``...).
        run_settings: what ``train()`` was given, as plain data, stored in full checkpoints and compared
            on resume (:func:`segzoo.training.run_settings.describe_run`; ``None`` in ``infer``).
        skipped_batches: batches skipped under ``nonfinite="skip"`` (counted over the run).
        exception: the exception being handled in ``on_exception``.
    """

    logdir: Path | None = None
    model: nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: Any = None
    is_main_process: bool = True
    distributed: bool = False
    world_size: int = 1
    nonfinite: str = "raise"
    max_batches: int | None = None
    checkpoint_data: dict[str, Any] = field(default_factory=dict)
    run_settings: dict[str, Any] | None = None
    skipped_batches: int = 0
    exception: BaseException | None = None


@dataclass
class BestTracker:
    """The one owner of "best": which metric selects the best epoch, and the best so far.

    The runner calls :meth:`update` once per epoch with the valid value of ``main_metric``;
    ``best.pth``, the ``*best*`` console mark, ``_metrics.json``'s ``"best"`` entry and
    ``state.metrics.is_best`` all read the result from here.

    Attributes:
        valid_loader: name of the validation loader.
        main_metric: the valid metric that selects the best checkpoint.
        minimize_metric: whether a lower ``main_metric`` is better.
        best_valid_metric: best value of ``main_metric`` so far (``None`` before the first epoch).
        best_name: ``"{stage}.{epoch}"`` of the best epoch so far (``None`` before the first epoch).
        is_best_valid: the current epoch set a new best.
    """

    valid_loader: str = "valid"
    main_metric: str = "loss"
    minimize_metric: bool = True
    best_valid_metric: float | None = None
    best_name: str | None = None
    is_best_valid: bool = False

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the main metric beats ``best`` in the run's direction (ties do not)."""
        if best is None:
            return True
        return value < best if self.minimize_metric else value > best

    def update(self, value: float, name: str) -> bool:
        """Record the epoch ``name`` (``"{stage}.{epoch}"``) whose main metric is ``value``.

        Returns:
            Whether it is a new best (also in :attr:`is_best_valid`).
        """
        self.is_best_valid = self.is_better(value, self.best_valid_metric)
        if self.is_best_valid:
            self.best_valid_metric, self.best_name = value, name
        return self.is_best_valid


@dataclass
class StageInfo:
    """The current stage: set at each stage start.

    Attributes:
        stage: name of the current stage.
        stage_index: index of the current stage in the run.
        num_epochs: epochs of the current stage.
        criterion, optimizer, scheduler: what the stage trains with.
        callbacks: the stage's callbacks in run order (their ``state_dict()`` go into full checkpoints).
        loggers: the stage's logger callbacks by name (Catalyst 19.x ``state.loggers``).
        stop_training: set by a callback (early stopping) to end the stage after this epoch.
    """

    stage: str = ""
    stage_index: int = 0
    num_epochs: int = 0
    criterion: Any = None
    optimizer: Any = None
    scheduler: Any = None
    callbacks: list[Any] = field(default_factory=list)
    loggers: dict[Any, Any] = field(default_factory=dict)
    stop_training: bool = False


@dataclass
class EpochInfo:
    """The current epoch.

    Attributes:
        epoch: epoch within the stage, 1-based.
        global_epoch: epochs run since the start of training, over all stages.
        epoch_metrics: ``{loader_name: {metric: value}}`` of the current epoch.
        valid_metrics: the epoch metrics of the validation loader (of the last finished epoch).
    """

    epoch: int = 0
    global_epoch: int = 0
    epoch_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    valid_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LoaderInfo:
    """The current loader.

    Attributes:
        loader_name: name of the current loader (``"train"``, ``"valid"``, ...).
        loader_len: number of batches of the current loader.
        need_backward: the loader's name starts with ``"train"``: gradients and optimizer steps.
        loader_metrics: metrics of the current loader, filled at loader end (exact values).
    """

    loader_name: str = ""
    loader_len: int = 0
    need_backward: bool = False
    loader_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchInfo:
    """The current batch.

    Attributes:
        batch_index: index of the current batch in the loader, 0-based.
        batch_size: number of samples in the current batch.
        input: the current batch as a dict (features (B, C, H, W), targets, ...), on the device.
        output: the model's outputs as a dict (``{"logits": (B, K, H, W)}``).
        loss: named loss tensors of the batch; the one optimized is under ``"loss"``.
        batch_metrics: plain float metrics of the current batch.
    """

    batch_index: int = 0
    batch_size: int = 0
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, torch.Tensor] = field(default_factory=dict)
    batch_metrics: dict[str, float] = field(default_factory=dict)


# attribute of RunnerState holding each group, in the order they are shown
GROUPS: dict[str, type] = {"run_info": RunInfo, "best": BestTracker, "stage_info": StageInfo,
                           "epoch_info": EpochInfo, "loader_info": LoaderInfo, "batch_info": BatchInfo}
# flat name -> group attribute, e.g. "epoch" -> "epoch_info"
FIELD_GROUP: dict[str, str] = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}


class _Grouped:
    """A flat attribute of :class:`RunnerState` that reads and writes the field of the same name in one group."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        if name not in {f.name for f in fields(GROUPS[self.group])}:
            raise TypeError(f"{owner.__name__}.{name}: {GROUPS[self.group].__name__} has no field {name!r}")
        self.name = name
        self.__doc__ = f"``state.{self.group}.{name}`` (see :class:`{GROUPS[self.group].__name__}`)."

    def __get__(self, state: Any, owner: type | None = None) -> Any:
        if state is None:
            return self
        return getattr(getattr(state, self.group), self.name)

    def __set__(self, state: Any, value: Any) -> None:
        setattr(getattr(state, self.group), self.name, value)


class RunnerState:
    """The mediator between the runner and its callbacks (Catalyst's ``RunnerState``).

    Values are grouped by lifetime: :class:`RunInfo` (``state.run_info``), :class:`BestTracker`
    (``state.best``), :class:`StageInfo` (``state.stage_info``), :class:`EpochInfo`
    (``state.epoch_info``), :class:`LoaderInfo` (``state.loader_info``) and :class:`BatchInfo`
    (``state.batch_info``); see each for its fields. Every field is also an attribute of the
    state itself, declared below (``state.epoch`` is ``state.epoch_info.epoch``, ``state.loss`` is
    ``state.batch_info.loss``), read and written as before. ``state.metrics`` is the Catalyst
    19.x view of the metrics (:class:`MetricsView`).

    Args:
        **values: initial field values by their flat name, e.g. ``RunnerState(model=m, stage="predict")``.

    Raises:
        TypeError: a name that is not a field of any group.
    """

    run_info: RunInfo
    best: BestTracker
    stage_info: StageInfo
    epoch_info: EpochInfo
    loader_info: LoaderInfo
    batch_info: BatchInfo

    # RunInfo
    logdir: Path | None = _Grouped("run_info")
    model: nn.Module | None = _Grouped("run_info")
    device: torch.device = _Grouped("run_info")
    amp_dtype: torch.dtype | None = _Grouped("run_info")
    channels_last: bool = _Grouped("run_info")
    scaler: Any = _Grouped("run_info")
    is_main_process: bool = _Grouped("run_info")
    distributed: bool = _Grouped("run_info")
    world_size: int = _Grouped("run_info")
    nonfinite: str = _Grouped("run_info")
    max_batches: int | None = _Grouped("run_info")
    checkpoint_data: dict[str, Any] = _Grouped("run_info")
    run_settings: dict[str, Any] | None = _Grouped("run_info")
    skipped_batches: int = _Grouped("run_info")
    exception: BaseException | None = _Grouped("run_info")
    # BestTracker
    valid_loader: str = _Grouped("best")
    main_metric: str = _Grouped("best")
    minimize_metric: bool = _Grouped("best")
    best_valid_metric: float | None = _Grouped("best")
    best_name: str | None = _Grouped("best")
    is_best_valid: bool = _Grouped("best")
    # StageInfo
    stage: str = _Grouped("stage_info")
    stage_index: int = _Grouped("stage_info")
    num_epochs: int = _Grouped("stage_info")
    criterion: Any = _Grouped("stage_info")
    optimizer: Any = _Grouped("stage_info")
    scheduler: Any = _Grouped("stage_info")
    callbacks: list[Any] = _Grouped("stage_info")
    loggers: dict[Any, Any] = _Grouped("stage_info")
    stop_training: bool = _Grouped("stage_info")
    # EpochInfo
    epoch: int = _Grouped("epoch_info")
    global_epoch: int = _Grouped("epoch_info")
    epoch_metrics: dict[str, dict[str, float]] = _Grouped("epoch_info")
    valid_metrics: dict[str, float] = _Grouped("epoch_info")
    # LoaderInfo
    loader_name: str = _Grouped("loader_info")
    loader_len: int = _Grouped("loader_info")
    need_backward: bool = _Grouped("loader_info")
    loader_metrics: dict[str, float] = _Grouped("loader_info")
    # BatchInfo
    batch_index: int = _Grouped("batch_info")
    batch_size: int = _Grouped("batch_info")
    input: dict[str, Any] = _Grouped("batch_info")
    output: dict[str, Any] = _Grouped("batch_info")
    loss: dict[str, torch.Tensor] = _Grouped("batch_info")
    batch_metrics: dict[str, float] = _Grouped("batch_info")

    def __init__(self, **values: Any) -> None:
        for group, cls in GROUPS.items():
            setattr(self, group, cls())
        for name, value in values.items():
            if name not in FIELD_GROUP:
                raise TypeError(f"RunnerState has no field {name!r}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"RunnerState({', '.join(f'{g}={getattr(self, g)!r}' for g in GROUPS)})"

    @property
    def metrics(self) -> MetricsView:
        """Catalyst 19.x ``state.metrics``: the same values seen through its method names."""
        return MetricsView(self)

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the main metric beats ``best`` in the run's direction."""
        return self.best.is_better(value, best)


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
