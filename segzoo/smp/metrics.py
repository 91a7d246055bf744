"""smp 0.6's metric API (``segzoo.smp.metrics``): :func:`get_stats` counts, then score functions with smp's
reductions, giving smp's values.

``tp, fp, fn, tn = get_stats(output, target, mode=..., threshold=...)`` are (N, C) int64 counts per image and
class; every score takes them with ``reduction`` one of:

- ``"micro"``: counts summed over images and classes, one score (no ``zero_division`` handling, as smp);
- ``"micro-imagewise"``: counts summed over classes per image, the scores averaged over images;
- ``"macro"``: counts summed over images per class, scores averaged over classes (``class_weights``, if
  given, are normalized to sum 1 and multiply the scores before the mean, as smp);
- ``"weighted"``: as ``"macro"`` but the weighted sum (``class_weights`` required);
- ``"macro-imagewise"`` / ``"weighted-imagewise"``: a score per image and class, averaged over images, then
  as ``"macro"``;
- ``"none"`` / ``None``: the (N, C) scores.

A score whose denominator is 0 becomes ``zero_division`` (default 1.0; ``"warn"``: 0 and a warning).
segzoo's own :func:`segzoo.metrics.iou` / ``dice`` compute the ``"macro"`` kind of value from soft or
thresholded outputs; these functions follow smp's definitions exactly.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import torch

__all__ = ["get_stats", "fbeta_score", "f1_score", "iou_score", "accuracy", "precision", "recall", "sensitivity",
           "specificity", "balanced_accuracy", "positive_predictive_value", "negative_predictive_value",
           "false_negative_rate", "false_positive_rate", "false_discovery_rate", "false_omission_rate",
           "positive_likelihood_ratio", "negative_likelihood_ratio"]

_MODES = ("binary", "multiclass", "multilabel")
REDUCTIONS = ("micro", "macro", "weighted", "micro-imagewise", "macro-imagewise", "weighted-imagewise", "none", None)

Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def get_stats(output: torch.Tensor, target: torch.Tensor, mode: str, ignore_index: int | None = None,
              threshold: float | None = None, num_classes: int | None = None) -> Stats:
    """True positive, false positive, false negative and true negative pixel counts per image and class.

    Args:
        output: ``"binary"``: (N, 1, ...) ; ``"multilabel"``: (N, C, ...), integer 0/1, or floats with
            ``threshold``; ``"multiclass"``: (N, ...) integer class indices.
        target: integer tensor of the same shape.
        mode: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        ignore_index: target value left out (``"multiclass"`` only; outside ``0..num_classes - 1``).
        threshold: binarize float ``output`` (and ``target``) at ``>= threshold`` (not ``"multiclass"``).
        num_classes: the number of classes (``"multiclass"`` only, required there).

    Returns:
        ``(tp, fp, fn, tn)``, each an (N, C) int64 tensor.

    Raises:
        ValueError: a misconfiguration, in one line (as smp).
    """
    if torch.is_floating_point(target):
        raise ValueError(f"get_stats: target must be an integer tensor, got {target.dtype}")
    if mode not in _MODES:
        raise ValueError(f"get_stats: mode must be one of {list(_MODES)}, got mode={mode!r}")
    if torch.is_floating_point(output) and mode == "multiclass":
        raise ValueError(f"get_stats: mode='multiclass' takes integer class indices as output, got {output.dtype} "
                         f"(use output.argmax(1))")
    if torch.is_floating_point(output) and threshold is None:
        raise ValueError(f"get_stats: a float output ({output.dtype}) needs threshold=")
    if mode == "multiclass" and threshold is not None:
        raise ValueError("get_stats: threshold= is not supported with mode='multiclass'")
    if output.shape != target.shape:
        raise ValueError(f"get_stats: output and target shapes differ: {tuple(output.shape)} != "
                         f"{tuple(target.shape)}")
    if mode != "multiclass" and ignore_index is not None:
        raise ValueError(f"get_stats: ignore_index is not supported with mode={mode!r}")
    if mode == "multiclass" and num_classes is None:
        raise ValueError("get_stats: mode='multiclass' needs num_classes=")
    if ignore_index is not None and 0 <= ignore_index <= num_classes - 1:
        raise ValueError(f"get_stats: ignore_index={ignore_index} is a class value (0..{num_classes - 1}); "
                         f"use a value outside that range, e.g. -1 or 255")
    with torch.no_grad():
        if mode == "multiclass":
            return _multiclass_stats(output, target, num_classes, ignore_index)
        if threshold is not None:
            output = (output >= threshold).long()
            target = (target >= threshold).long()
        return _multilabel_stats(output, target)


def _counts(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C) number of pixels of each class value per image; values outside 0..C-1 are not counted."""
    n = values.shape[0]
    flat = values.reshape(n, -1).long()
    inside = (flat >= 0) & (flat < num_classes)
    rows = torch.arange(n, device=flat.device).unsqueeze(1).expand_as(flat)
    index = (rows * num_classes + flat)[inside]
    return torch.bincount(index, minlength=n * num_classes).reshape(n, num_classes)


def _multiclass_stats(output: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None) -> Stats:
    n = output.shape[0]
    pixels = output[0].numel() if n else 0
    if ignore_index is not None:
        ignored = target == ignore_index
        output = torch.where(ignored, -1, output)
        target = torch.where(ignored, -1, target)
    tp = _counts(torch.where(output == target, target, -1), num_classes)
    fp = _counts(output, num_classes) - tp
    fn = _counts(target, num_classes) - tp
    tn = pixels - tp - fp - fn
    if ignore_index is not None:
        tn = tn - ignored.reshape(n, -1).sum(1, keepdim=True)
    return tp.cpu(), fp.cpu(), fn.cpu(), tn.cpu()


def _multilabel_stats(output: torch.Tensor, target: torch.Tensor) -> Stats:
    n, c = target.shape[:2]
    output, target = output.reshape(n, c, -1), target.reshape(n, c, -1)
    tp = (output * target).sum(2)
    fp = output.sum(2) - tp
    fn = target.sum(2) - tp
    tn = target.shape[2] - (tp + fp + fn)
    return tp, fp, fn, tn


def _zero_division(score: torch.Tensor, zero_division: str | float) -> torch.Tensor:
    nans = torch.isnan(score)
    if zero_division == "warn":
        if bool(nans.any()):
            warnings.warn("Zero division in metric calculation!", stacklevel=4)
        zero_division = 0
    return torch.where(nans, torch.tensor(zero_division, dtype=score.dtype, device=score.device), score)


def _reduce(metric: Callable[..., torch.Tensor], tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor,
            tn: torch.Tensor, reduction: str | None, class_weights: Sequence[float] | None,
            zero_division: str | float, **kwargs: float) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    if class_weights is None and reduction is not None and "weighted" in reduction:
        raise ValueError(f"reduction={reduction!r} needs class_weights=")
    weights = torch.tensor(class_weights if class_weights is not None else 1.0).to(tp.device)
    weights = weights / weights.sum()
    if reduction == "micro":
        return metric(tp.sum(), fp.sum(), fn.sum(), tn.sum(), **kwargs)
    if reduction in ("macro", "weighted"):
        score = _zero_division(metric(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0), **kwargs), zero_division)
        return (score * weights).mean() if reduction == "macro" else (score * weights).sum()
    if reduction == "micro-imagewise":
        return _zero_division(metric(tp.sum(1), fp.sum(1), fn.sum(1), tn.sum(1), **kwargs), zero_division).mean()
    score = _zero_division(metric(tp, fp, fn, tn, **kwargs), zero_division)
    if reduction in ("macro-imagewise", "weighted-imagewise"):
        return (score.mean(0) * weights).mean()
    return score


def _fbeta(tp, fp, fn, tn, beta: float = 1.0):
    return (1 + beta ** 2) * tp / ((1 + beta ** 2) * tp + beta ** 2 * fn + fp)


def _iou(tp, fp, fn, tn):
    return tp / (tp + fp + fn)


def _accuracy(tp, fp, fn, tn):
    return (tp + tn) / (tp + fp + fn + tn)


def _sensitivity(tp, fp, fn, tn):
    return tp / (tp + fn)


def _specificity(tp, fp, fn, tn):
    return tn / (tn + fp)


def _ppv(tp, fp, fn, tn):
    return tp / (tp + fp)


def _npv(tp, fp, fn, tn):
    return tn / (tn + fn)


_DEFINITIONS: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    "iou_score": (_iou, "IoU (Jaccard index) TP / (TP + FP + FN)"),
    "accuracy": (_accuracy, "accuracy (TP + TN) / all"),
    "sensitivity": (_sensitivity, "sensitivity (recall, TPR) TP / (TP + FN)"),
    "specificity": (_specificity, "specificity (TNR) TN / (TN + FP)"),
    "balanced_accuracy": (lambda *s: (_sensitivity(*s) + _specificity(*s)) / 2,
                          "balanced accuracy (sensitivity + specificity) / 2"),
    "positive_predictive_value": (_ppv, "positive predictive value (precision) TP / (TP + FP)"),
    "negative_predictive_value": (_npv, "negative predictive value TN / (TN + FN)"),
    "false_negative_rate": (lambda *s: 1 - _sensitivity(*s), "false negative rate 1 - sensitivity"),
    "false_positive_rate": (lambda *s: 1 - _specificity(*s), "false positive rate 1 - specificity"),
    "false_discovery_rate": (lambda *s: 1 - _ppv(*s), "false discovery rate 1 - precision"),
    "false_omission_rate": (lambda *s: 1 - _npv(*s), "false omission rate 1 - NPV"),
    "positive_likelihood_ratio": (lambda *s: _sensitivity(*s) / (1 - _specificity(*s)),
                                  "positive likelihood ratio sensitivity / FPR"),
    "negative_likelihood_ratio": (lambda *s: (1 - _sensitivity(*s)) / _specificity(*s),
                                  "negative likelihood ratio FNR / specificity"),
}

_ARGS_DOC = """

    Args:
        tp, fp, fn, tn: (N, C) counts from :func:`get_stats`.
        reduction: see the module docstring (``None``: the (N, C) scores).
        class_weights: per-class weights (``"weighted"`` reductions need them).
        zero_division: the value of a score whose denominator is 0, or ``"warn"`` (0 and a warning).

    Returns:
        a scalar tensor, or (N, C) scores with ``reduction=None``.
    """


def _score_function(name: str, metric: Callable[..., torch.Tensor], what: str) -> Callable[..., torch.Tensor]:
    def score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor, reduction: str | None = None,
              class_weights: Sequence[float] | None = None, zero_division: str | float = 1.0) -> torch.Tensor:
        return _reduce(metric, tp, fp, fn, tn, reduction, class_weights, zero_division)

    score.__name__ = score.__qualname__ = name
    score.__doc__ = f"The {what} of :func:`get_stats` counts, reduced as smp." + _ARGS_DOC
    return score


def fbeta_score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor, beta: float = 1.0,
                reduction: str | None = None, class_weights: Sequence[float] | None = None,
                zero_division: str | float = 1.0) -> torch.Tensor:
    """F-beta score ``(1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP)`` of :func:`get_stats` counts, reduced as smp.

    Args:
        tp: (N, C) true positives from :func:`get_stats`.
        fp: (N, C) false positives.
        fn: (N, C) false negatives.
        tn: (N, C) true negatives.
        beta: weight of recall against precision.
        reduction: see the module docstring (``None``: the (N, C) scores).
        class_weights: per-class weights (``"weighted"`` reductions need them).
        zero_division: the value of a score whose denominator is 0, or ``"warn"`` (0 and a warning).
    """
    return _reduce(_fbeta, tp, fp, fn, tn, reduction, class_weights, zero_division, beta=beta)


f1_score = _score_function("f1_score", functools.partial(_fbeta, beta=1.0), "F1 score (Dice) 2TP / (2TP + FP + FN)")
iou_score = _score_function("iou_score", *_DEFINITIONS["iou_score"])
accuracy = _score_function("accuracy", *_DEFINITIONS["accuracy"])
sensitivity = _score_function("sensitivity", *_DEFINITIONS["sensitivity"])
specificity = _score_function("specificity", *_DEFINITIONS["specificity"])
balanced_accuracy = _score_function("balanced_accuracy", *_DEFINITIONS["balanced_accuracy"])
positive_predictive_value = _score_function("positive_predictive_value", *_DEFINITIONS["positive_predictive_value"])
negative_predictive_value = _score_function("negative_predictive_value", *_DEFINITIONS["negative_predictive_value"])
false_negative_rate = _score_function("false_negative_rate", *_DEFINITIONS["false_negative_rate"])
false_positive_rate = _score_function("false_positive_rate", *_DEFINITIONS["false_positive_rate"])
false_discovery_rate = _score_function("false_discovery_rate", *_DEFINITIONS["false_discovery_rate"])
false_omission_rate = _score_function("false_omission_rate", *_DEFINITIONS["false_omission_rate"])
positive_likelihood_ratio = _score_function("positive_likelihood_ratio", *_DEFINITIONS["positive_likelihood_ratio"])
negative_likelihood_ratio = _score_function("negative_likelihood_ratio", *_DEFINITIONS["negative_likelihood_ratio"])
precision = positive_predictive_value
recall = sensitivity
