"""Loss computation callbacks."""

from __future__ import annotations

import math
from typing import Any

import torch

from segzoo.errors import unknown_name_error
from segzoo.training.callback import Callback, CallbackOrder, outputs_and_targets, register_callback
from segzoo.training.state import RunnerState

#: the key of a model's image-level labels in ``state.output`` (models built with ``aux_params``)
AUX_OUTPUT_KEY = "label_logits"


@register_callback("CriterionCallback")
class CriterionCallback(Callback):
    """Compute ``criterion(output[output_key], input[input_key]) * multiplier`` into ``state.loss[prefix]``.

    With ``aux_criterion`` (a model built with ``aux_params``, whose labels the runner puts in
    ``output[aux_output_key]``), ``aux_weight * aux_criterion(output[aux_output_key], input[aux_target_key])``
    is added; the two parts are logged as ``{prefix}/mask`` and ``{prefix}/aux``.

    Args:
        input_key: target key of the batch.
        output_key: model output key.
        prefix: name of the loss (and of its batch metric).
        criterion_key: key when ``state.criterion`` is a dict of criteria.
        multiplier: scale of the loss.
        aux_criterion: loss of the image-level labels (B, K), e.g. ``nn.BCEWithLogitsLoss()`` for multi-hot
            float targets (B, K) or ``nn.CrossEntropyLoss()`` for class indices (B,); ``None``: none.
        aux_weight: its weight in the total.
        aux_target_key: batch key of the image-level targets.
        aux_output_key: output key of the model's labels.
    """

    def __init__(self, input_key: str = "targets", output_key: str = "logits", prefix: str = "loss",
                 criterion_key: str | None = None, multiplier: float = 1.0, aux_criterion: Any = None,
                 aux_weight: float = 0.4, aux_target_key: str = "label",
                 aux_output_key: str = AUX_OUTPUT_KEY) -> None:
        super().__init__(CallbackOrder.Criterion)
        if aux_criterion is not None and not callable(aux_criterion):
            raise TypeError(f"aux_criterion must be a loss (callable), got {type(aux_criterion).__name__}")
        if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or not math.isfinite(aux_weight):
            raise ValueError(f"aux_weight must be a finite number, got {aux_weight!r}")
        self.input_key, self.output_key, self.prefix = input_key, output_key, prefix
        self.criterion_key, self.multiplier = criterion_key, multiplier
        self.aux_criterion, self.aux_weight = aux_criterion, float(aux_weight)
        self.aux_target_key, self.aux_output_key = aux_target_key, aux_output_key

    def _aux_loss(self, state: RunnerState) -> torch.Tensor:
        if self.aux_output_key not in state.output:
            raise KeyError(f"CriterionCallback: aux_criterion needs the model's labels (output {self.aux_output_key!r}): "
                           f"build the model with aux_params=dict(classes=K); outputs: {sorted(state.output)}")
        if self.aux_target_key not in state.input:
            raise KeyError(f"CriterionCallback: aux_criterion needs an image-level target {self.aux_target_key!r} in "
                           f"each batch (ProceduralSegmentation(labels=True) gives 'label'); "
                           f"batch keys: {sorted(state.input)}")
        return self.aux_criterion(state.output[self.aux_output_key], state.input[self.aux_target_key])

    def on_batch_end(self, state: RunnerState) -> None:
        criterion = state.criterion
        if isinstance(criterion, dict):
            if self.criterion_key not in criterion:
                raise unknown_name_error("criterion key", str(self.criterion_key), criterion)
            criterion = criterion[self.criterion_key]
        if criterion is None:
            raise ValueError("CriterionCallback needs a criterion: pass criterion= to train()")
        outputs, targets = outputs_and_targets(self, state)
        loss = criterion(outputs, targets)
        if self.multiplier != 1 or not loss.is_floating_point():  # float x * 1.0 is x: no op added to the graph
            loss = loss * self.multiplier
        if self.aux_criterion is not None:
            aux = self._aux_loss(state)
            state.batch_metrics[f"{self.prefix}/mask"] = float(loss.item())
            state.batch_metrics[f"{self.prefix}/aux"] = float(aux.item())
            loss = loss + self.aux_weight * aux
        state.loss[self.prefix] = loss
        state.batch_metrics[self.prefix] = float(loss.item())


@register_callback("CriterionAggregatorCallback")
class CriterionAggregatorCallback(Callback):
    """Combine several losses into ``state.loss[prefix]``.

    Args:
        prefix: name of the combined loss (``"loss"`` is the one optimized).
        loss_keys: names of the losses to combine (a dict ``name -> weight`` for ``"weighted_sum"``).
        loss_aggregate_fn: ``"sum"``, ``"mean"`` or ``"weighted_sum"``.
        multiplier: scale of the result.
    """

    def __init__(self, prefix: str, loss_keys: list[str] | dict[str, float] | None = None,
                 loss_aggregate_fn: str = "sum", multiplier: float = 1.0) -> None:
        super().__init__(CallbackOrder.Criterion + 1)
        if loss_aggregate_fn not in ("sum", "mean", "weighted_sum"):
            raise ValueError(f"loss_aggregate_fn must be 'sum', 'mean' or 'weighted_sum', got {loss_aggregate_fn!r}")
        if loss_aggregate_fn == "weighted_sum" and not isinstance(loss_keys, dict):
            raise ValueError("loss_aggregate_fn='weighted_sum' needs loss_keys as a dict name -> weight")
        self.prefix, self.loss_keys, self.fn, self.multiplier = prefix, loss_keys, loss_aggregate_fn, multiplier

    def on_batch_end(self, state: RunnerState) -> None:
        keys = list(self.loss_keys) if self.loss_keys is not None else [k for k in state.loss if k != self.prefix]
        missing = [k for k in keys if k not in state.loss]
        if missing:
            raise KeyError(f"losses {missing} not computed; available: {sorted(state.loss)}")
        if self.fn == "weighted_sum":
            total = sum(state.loss[k] * w for k, w in self.loss_keys.items())
        else:
            total = torch.stack([state.loss[k] for k in keys]).sum()
            if self.fn == "mean":
                total = total / len(keys)
        state.loss[self.prefix] = total * self.multiplier
        state.batch_metrics[self.prefix] = float(state.loss[self.prefix].detach())
