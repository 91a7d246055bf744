"""RunnerState: what the runner shares with callbacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the main metric beats ``best`` in the run's direction."""
        if best is None:
            return True
        return value < best if self.minimize_metric else value > best
