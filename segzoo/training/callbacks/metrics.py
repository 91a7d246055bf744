"""Metric callbacks: a generic per-batch one, and exact epoch Dice / IoU."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from segzoo.errors import short_repr
from segzoo.metrics import ACTIVATIONS, dice_from_sums, iou_from_sums, segmentation_sums
from segzoo.training.callback import Callback, CallbackOrder, outputs_and_targets, register_callback
from segzoo.training.distributed import all_reduce_sum
from segzoo.training.state import RunnerState


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_prefix(prefix: Any) -> None:
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix (the metric's name) must be a non-empty string, got {short_repr(prefix)}")


def _check_overlap_params(eps: Any, threshold: Any, activation: Any, ignore_index: Any, class_names: Any) -> None:
    """Refuse at construction what would otherwise fail (or mislead) at the first batch."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {short_repr(activation)}")
    if threshold is not None:
        if not _is_number(threshold):
            raise ValueError(f"threshold must be a number or None, got {short_repr(threshold)}")
        if activation is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (it applies to {activation} probabilities), "
                             f"got {short_repr(threshold)}")
    if not _is_number(eps) or eps <= 0:
        raise ValueError(f"eps must be a number > 0, got {short_repr(eps)}")
    if ignore_index is not None and (not isinstance(ignore_index, int) or isinstance(ignore_index, bool)):
        raise ValueError(f"ignore_index must be an int or None, got {short_repr(ignore_index)}")
    if class_names is not None and (not isinstance(class_names, list | tuple)
                                    or not all(isinstance(n, str) and n for n in class_names)):
        raise ValueError(f"class_names must be a list of non-empty strings, got {short_repr(class_names)}")


@register_callback("MetricCallback")
class MetricCallback(Callback):
    """``metric_fn(outputs, targets, **metric_params)`` per batch, under ``prefix``.

    The loader value is the mean of batch values weighted by batch size (all processes
    included under DDP). Subclass it, or pass any function returning a number.

    Args:
        prefix: metric name.
        metric_fn: ``(outputs, targets, **params) -> float or 0-d tensor``.
        input_key: target key of the batch.
        output_key: model output key.
        **metric_params: passed to ``metric_fn``.
    """

    def __init__(self, prefix: str, metric_fn: Callable[..., Any], input_key: str = "targets",
                 output_key: str = "logits", **metric_params: Any) -> None:
        super().__init__(CallbackOrder.Metric)
        _check_prefix(prefix)
        if not callable(metric_fn):
            raise TypeError(f"metric_fn must be callable, got {type(metric_fn).__name__}")
        self.prefix, self.metric_fn = prefix, metric_fn
        self.input_key, self.output_key, self.metric_params = input_key, output_key, metric_params

    def on_batch_end(self, state: RunnerState) -> None:
        with torch.no_grad():
            value = self.metric_fn(*outputs_and_targets(self, state), **self.metric_params)
        state.batch_metrics[self.prefix] = float(value)


class _OverlapCallback(Callback):
    """Accumulates per-class intersections and sums over the loader for an exact epoch value."""

    score_fn: Callable[..., torch.Tensor] = staticmethod(dice_from_sums)

    def __init__(self, input_key: str = "targets", output_key: str = "logits", prefix: str = "dice",
                 eps: float = 1e-7, threshold: float | None = None, activation: str | None = "Sigmoid",
                 ignore_index: int | None = None, class_names: list[str] | None = None) -> None:
        super().__init__(CallbackOrder.Metric)
        _check_prefix(prefix)
        _check_overlap_params(eps, threshold, activation, ignore_index, class_names)
        self.input_key, self.output_key, self.prefix, self.eps = input_key, output_key, prefix, eps
        self.threshold, self.activation, self.ignore_index = threshold, activation, ignore_index
        self.class_names = class_names
        self._sums: torch.Tensor | None = None

    def on_loader_start(self, state: RunnerState) -> None:
        self._sums = None

    def on_batch_end(self, state: RunnerState) -> None:
        outputs, targets = outputs_and_targets(self, state)
        sums = torch.stack(segmentation_sums(outputs, targets, self.threshold, self.activation, self.ignore_index))
        self._sums = sums if self._sums is None else self._sums + sums
        state.batch_metrics[self.prefix] = float(self.score_fn(*sums, eps=self.eps).mean())

    def on_loader_end(self, state: RunnerState) -> None:
        if self._sums is None:
            return
        sums = all_reduce_sum(self._sums, state) if state.distributed else self._sums
        per_class = self.score_fn(*sums, eps=self.eps)
        state.loader_metrics[self.prefix] = float(per_class.mean())
        if per_class.numel() > 1:
            names = self.class_names or [f"class_{i}" for i in range(per_class.numel())]
            for name, value in zip(names, per_class.tolist()):
                state.loader_metrics[f"{self.prefix}/{name}"] = value


@register_callback("DiceCallback")
class DiceCallback(_OverlapCallback):
    """Exact epoch Dice: per-class sums accumulated over the loader (and over processes).

    Args:
        input_key: target key; targets (B, C, H, W) float or (B, H, W) class indices.
        output_key: logits key (B, C, H, W).
        prefix: metric name; per-class values are ``{prefix}/{class name}`` when C > 1.
        eps: denominator floor.
        threshold: binarize after the activation (None: soft for Sigmoid, arg-max for Softmax2d).
        activation: ``"Sigmoid"``, ``"Softmax2d"`` or None.
        ignore_index: target value left out.
        class_names: names for the per-class values.
    """


@register_callback("IouCallback")
class IouCallback(_OverlapCallback):
    """Exact epoch IoU (Jaccard); arguments as :class:`DiceCallback` with ``prefix="iou"``."""

    score_fn = staticmethod(iou_from_sums)

    def __init__(self, input_key: str = "targets", output_key: str = "logits", prefix: str = "iou",
                 eps: float = 1e-7, threshold: float | None = None, activation: str | None = "Sigmoid",
                 ignore_index: int | None = None, class_names: list[str] | None = None) -> None:
        super().__init__(input_key, output_key, prefix, eps, threshold, activation, ignore_index, class_names)


def label_accuracy(outputs: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Accuracy of image-level labels: logits (B, K) against class indices (B,) (arg-max), or against
    multi-hot targets (B, K) (``sigmoid > threshold``, the mean over all B*K decisions)."""
    if targets.dim() == 1 and not targets.is_floating_point():
        return (outputs.argmax(1) == targets).float().mean()
    if targets.shape != outputs.shape:
        raise ValueError(f"label targets of shape {tuple(targets.shape)} do not fit the labels {tuple(outputs.shape)}: "
                         f"give (B,) class indices or (B, K) multi-hot targets")
    return ((outputs.sigmoid() > threshold) == (targets > 0.5)).float().mean()


@register_callback("LabelAccuracyCallback")
class LabelAccuracyCallback(MetricCallback):
    """Accuracy of the image-level labels of a model built with ``aux_params`` (see :func:`label_accuracy`).

    Args:
        prefix: metric name.
        input_key: batch key of the image-level targets.
        output_key: output key of the labels (B, K).
        threshold: on the sigmoid, for multi-hot targets.
    """

    def __init__(self, prefix: str = "label_accuracy", input_key: str = "label", output_key: str = "label_logits",
                 threshold: float = 0.5) -> None:
        if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {short_repr(threshold)}")
        super().__init__(prefix, label_accuracy, input_key=input_key, output_key=output_key, threshold=threshold)
