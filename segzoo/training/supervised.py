"""SupervisedRunner: batches are dicts or ``(features, targets)`` pairs, the model maps features to logits."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from segzoo.device import resolve_device
from segzoo.training.callback import Callback, CallbackOrder
from segzoo.training.callbacks.criterion import AUX_OUTPUT_KEY, CriterionCallback
from segzoo.training.loop import move_to
from segzoo.training.runner import Runner
from segzoo.training.state import RunnerState
from segzoo.unwrap import unwrap_model


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
        """``{output_key: model(features)}``, features (B, C, H, W) -> logits (B, K, H, W).

        A segzoo model built with ``aux_params`` returns ``(logits, labels)``: the labels (B, K') go to
        ``output["label_logits"]`` (:data:`~segzoo.training.callbacks.criterion.AUX_OUTPUT_KEY`). Another
        model's tuple stays whole under ``output_key``, for the user's own criterion, as before.
        """
        out = model(state.input[self.input_key])
        if isinstance(out, tuple) and getattr(unwrap_model(model), "aux_classes", None) is not None:
            return {self.output_key: out[0], AUX_OUTPUT_KEY: out[1]}
        return {self.output_key: out}

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

    def _model_device(self, model: nn.Module) -> torch.device:
        param = next(iter(model.parameters()), None)
        return param.device if param is not None else resolve_device(self.device)

    def _features(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return batch
        return self.batch_to_dict(batch)[self.input_key]

    def predict_batch(self, batch: Any, **kwargs: Any) -> dict[str, Any]:
        """Outputs of the runner's model for one batch (Catalyst 19.x ``runner.predict_batch``).

        The batch goes to the model's device; the model runs in eval mode without gradients
        (its train/eval mode is restored afterwards).

        Args:
            batch: a dict holding ``input_key`` (features (B, C, H, W)), a ``(features, targets)``
                pair, or the features tensor itself; other items (file names...) are ignored.
            **kwargs: refused (Catalyst passed them to the model).

        Returns:
            ``{output_key: logits (B, K, H, W)}`` on the model's device.

        Raises:
            ValueError: the runner has no model (give one to the constructor, train or infer).
            TypeError: keyword arguments (Catalyst passed them to the model; segzoo models take none).
        """
        if kwargs:
            raise TypeError(f"predict_batch() takes no model keyword arguments, got {sorted(kwargs)}")
        model = self.model
        if model is None:
            raise ValueError("no model: pass one to SupervisedRunner(model=...), train() or infer() first")
        device = self._model_device(model)
        batch = {self.input_key: batch} if isinstance(batch, torch.Tensor) else self.batch_to_dict(batch)
        state = RunnerState(stage="predict", device=device, input=move_to(batch, device))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.forward(state, model)
        finally:
            model.train(was_training)

    def trace(self, model: nn.Module | None = None, batch: Any = None, logdir: str | os.PathLike | None = None,
              loader: Iterable | None = None, method_name: str = "forward", mode: str = "eval",
              requires_grad: bool = False, fp16: Any = None, device: str | torch.device = "cpu",
              predict_params: Mapping[str, Any] | None = None) -> torch.jit.ScriptModule:
        """TorchScript of the model, traced on a batch and checked against eager (Catalyst 19.x ``runner.trace``).

        Uses :func:`segzoo.export.trace_model` (same checks as ``segzoo trace``) on a copy of
        the model, so the runner's model keeps its mode and ``requires_grad``.

        Args:
            model: the model (default: the runner's); it becomes the runner's model.
            batch: a batch as in training (dict, pair or features (B, C, H, W)).
            logdir: when set, also save to ``logdir/trace/`` under
                :func:`segzoo.export.traced_filename` ``(None, method_name, mode, requires_grad)``,
                e.g. ``traced-forward.pth`` (an existing file is refused).
            loader: when ``batch`` is not given, its first batch is used.
            method_name: the model method to trace.
            mode: ``"eval"`` or ``"train"``.
            requires_grad: trace with gradients.
            fp16: only ``None`` / ``False`` (tracing is float32).
            device: where to trace.
            predict_params: only ``None`` (segzoo models take no forward keywords).

        Returns:
            The traced module (``torch.jit.save`` / ``torch.jit.load``, or ``torch::jit::load`` in C++).

        Raises:
            ValueError: no batch and no loader, no model, ``fp16`` / ``predict_params`` given.
            ExportCheckError: the trace does not reproduce eager outputs.
        """
        from segzoo.export import save_traced, trace_model, traced_filename

        if fp16:
            raise ValueError(f"runner.trace(fp16={fp16!r}) is not supported: tracing is float32; "
                             f"drop fp16 (cast the loaded TorchScript with .half() if you need it)")
        if predict_params is not None:
            raise ValueError("runner.trace(predict_params=...) is not supported: segzoo models' forward "
                             "takes only the input tensor")
        if batch is None:
            if loader is None:
                raise ValueError("runner.trace() needs batch= or loader=")
            batch = next(iter(loader))
        if model is not None:
            self.model = model
        if self.model is None:
            raise ValueError("no model: pass model= to trace() or give the runner one")
        dev = resolve_device(device)
        example = self._features(batch).to(dev)
        traced = trace_model(copy.deepcopy(self.model).to(dev), example, method=method_name, mode=mode,
                             requires_grad=requires_grad)
        if logdir is not None:
            save_traced(traced, Path(logdir) / "trace" / traced_filename(None, method_name, mode, requires_grad))
        return traced


class _OutputCollector(Callback):
    """Keeps CPU float32 copies of every batch's output."""

    def __init__(self, key: str) -> None:
        super().__init__(CallbackOrder.Internal)
        self.key = key
        self.outputs: list[torch.Tensor] = []

    def on_batch_end(self, state: RunnerState) -> None:
        self.outputs.append(state.output[self.key].detach().float().cpu())
