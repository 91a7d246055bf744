"""SupervisedRunner: batches are dicts or ``(features, targets)`` pairs, the model maps features to logits."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from segzoo.training.callback import Callback, CallbackOrder
from segzoo.training.callbacks.criterion import CriterionCallback
from segzoo.training.runner import Runner
from segzoo.training.state import RunnerState


class SupervisedRunner(Runner):
    """Trains, evaluates and predicts with ``output[output_key] = model(input[input_key])``.

    A batch is a dict holding ``input_key`` (features (B, C, H, W)) and usually
    ``input_target_key`` (targets), or a ``(features, targets)`` pair that becomes that dict.
    Batches are moved to the device with non-blocking copies: give the DataLoaders
    ``pin_memory=True`` on CUDA so the copies overlap with compute.

    Args:
        model: default model for :meth:`train`, :meth:`infer` and :meth:`predict_loader`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or ``None`` (CUDA if available).
        input_key: batch key of the model input (B, C, H, W).
        output_key: key of the model's output (B, K, H, W) in ``state.output``.
        input_target_key: batch key of the targets.

    Example:
        >>> runner = SupervisedRunner()
        >>> runner.train(model, criterion, optimizer, {"train": tl, "valid": vl}, logdir="logs/run",
        ...              callbacks=[DiceCallback(threshold=0.5)], num_epochs=10,
        ...              main_metric="dice", minimize_metric=False)
        >>> probs = torch.sigmoid(torch.from_numpy(runner.predict_loader(model, vl)))
    """

    def __init__(self, model: nn.Module | None = None, device: str | torch.device | None = None,
                 input_key: str = "features", output_key: str = "logits", input_target_key: str = "targets") -> None:
        super().__init__(model, device)
        self.input_key, self.output_key, self.input_target_key = input_key, output_key, input_target_key

    def batch_to_dict(self, batch: Any) -> dict[str, Any]:
        """A dict batch as is (it must hold ``input_key``); a pair as ``{input_key, input_target_key}``."""
        if isinstance(batch, Mapping):
            if self.input_key not in batch:
                raise KeyError(f"batch has no {self.input_key!r} key (keys: {sorted(batch)}); "
                               f"set SupervisedRunner(input_key=...)")
            return dict(batch)
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return {self.input_key: batch[0], self.input_target_key: batch[1]}
        raise TypeError(f"a batch must be a dict or a (features, targets) pair, got {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))

    def forward(self, state: RunnerState, model: nn.Module) -> dict[str, Any]:
        """``{output_key: model(features)}``, features (B, C, H, W) -> logits (B, K, H, W)."""
        return {self.output_key: model(state.input[self.input_key])}

    def criterion_callback(self) -> Callback:
        """CriterionCallback wired to this runner's keys."""
        return CriterionCallback(input_key=self.input_target_key, output_key=self.output_key)

    def predict_loader(self, model: nn.Module | None, loader: Iterable, resume: str | os.PathLike | None = None,
                       verbose: bool = False, **kwargs: Any) -> np.ndarray:
        """Outputs of ``model`` over ``loader`` (eval mode, no gradients) concatenated on the batch axis.

        Args:
            model: the model (default: the runner's).
            loader: batches as in training (targets are not needed).
            resume: checkpoint (file or log directory) whose weights to load first.
            verbose: show a progress bar.
            **kwargs: ``amp`` / ``channels_last`` as in :meth:`infer`.

        Returns:
            float32 array (N, K, H, W) of raw model outputs (logits).
        """
        collector = _OutputCollector(self.output_key)
        self.infer(model, {"infer": loader}, callbacks=[collector], verbose=verbose, resume=resume, **kwargs)
        if not collector.outputs:
            return np.zeros((0,), dtype=np.float32)
        return torch.cat(collector.outputs).numpy()


class _OutputCollector(Callback):
    """Keeps CPU float32 copies of every batch's output."""

    def __init__(self, key: str) -> None:
        super().__init__(CallbackOrder.Internal)
        self.key = key
        self.outputs: list[torch.Tensor] = []

    def on_batch_end(self, state: RunnerState) -> None:
        self.outputs.append(state.output[self.key].detach().float().cpu())
