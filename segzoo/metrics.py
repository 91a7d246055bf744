"""Segmentation metrics: Dice and IoU, exact over batches through per-class sums.

Target conventions (shared by metrics, losses and callbacks):

- binary / multi-label: logits (B, C, H, W) and float {0, 1} targets of the same shape
  ((B, H, W) targets are accepted when C == 1);
- multi-class: logits (B, C, H, W) and class-index targets (B, H, W), int64 or float class maps
  of whole numbers (0., 1., ..., as Catalyst 19.x scripts passed them; other float values are
  refused, see :func:`class_indices`); pixels equal to ``ignore_index`` are left out of every sum.

:func:`segmentation_sums` returns per-class intersection / prediction / target sums in
float64; adding them over the batches of an epoch and calling :func:`dice_from_sums` gives
the exact epoch value (not a mean of batch ratios).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("Sigmoid", "Softmax2d", None)


def _check_activation(activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def class_indices(targets: torch.Tensor) -> torch.Tensor:
    """Class-index targets as int64: integer and bool tensors as they are, float class maps when every
    value is a whole number (0., 1., 2., ...).

    Raises:
        ValueError: a float value that is not a whole number (0.5, NaN, Inf, beyond int32), in one line
            naming the shape, dtype and value: a soft or probability map is not a class map.
    """
    if targets.is_floating_point():
        # whole numbers in int32's range: NaN, Inf and huge values fail the test, nothing overflows in .long()
        whole = (targets == targets.trunc()) & (targets.abs() < 2**31)
        if not bool(whole.all()):
            bad = targets[~whole][0].item()
            raise ValueError(f"class-index targets: the float targets {tuple(targets.shape)} of dtype {targets.dtype} "
                             f"hold {bad!r}, not a whole class number; pass class indices (0, 1, ..., C - 1; "
                             f"floats such as 0., 1. are accepted)")
    return targets.long()


def prepare_targets(outputs: torch.Tensor, targets: torch.Tensor,
                    ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bring ``targets`` to the shape of ``outputs`` (B, C, H, W) and build the valid-pixel mask.

    Returns:
        ``(targets_onehot_or_float, valid)`` where ``valid`` is a (B, 1, H, W) bool mask
        or ``None`` when every pixel counts.

    Raises:
        ValueError: shapes that fit neither convention (both shapes are named).
    """
    if outputs.dim() != 4:
        raise ValueError(f"outputs must be (B, C, H, W), got shape {tuple(outputs.shape)}")
    b, c, h, w = outputs.shape
    valid = None
    if targets.dim() == 3 and tuple(targets.shape) == (b, h, w):
        if c > 1:  # class indices (float class maps of whole numbers too)
            t = class_indices(targets)
            if ignore_index is not None:
                valid = (t != ignore_index).unsqueeze(1)
                t = torch.where(valid.squeeze(1), t, torch.zeros_like(t))
            if t.numel() and (t.min() < 0 or t.max() >= c):
                raise ValueError(f"target class indices must be in [0, {c - 1}], found "
                                 f"[{int(t.min())}, {int(t.max())}]")
            onehot = F.one_hot(t, c).permute(0, 3, 1, 2).to(torch.float32)
            return (onehot if valid is None else onehot * valid), valid
        if c == 1:
            targets = targets.unsqueeze(1)
    if tuple(targets.shape) != (b, c, h, w):
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not fit outputs of shape {tuple(outputs.shape)}:"
                         f" expected (B, C, H, W) float targets, or (B, H, W) class indices")
    t = targets.to(torch.float32)
    if ignore_index is not None:
        valid = (t != ignore_index).all(dim=1, keepdim=True)
        t = torch.where(valid, t, torch.zeros_like(t))
    return t, valid


def activate(outputs: torch.Tensor, activation: str | None, threshold: float | None) -> torch.Tensor:
    """Turn logits (B, C, H, W) into (soft or hard) float32 predictions of the same shape."""
    _check_activation(activation)
    o = outputs.float()
    if activation == "Sigmoid":
        o = torch.sigmoid(o)
    elif activation == "Softmax2d":
        o = torch.softmax(o, dim=1)
        if threshold is None:  # hard arg-max one-hot prediction
            return F.one_hot(o.argmax(dim=1), o.shape[1]).permute(0, 3, 1, 2).to(torch.float32)
    if threshold is not None:
        o = (o > threshold).to(torch.float32)
    return o


@torch.no_grad()
def segmentation_sums(outputs: torch.Tensor, targets: torch.Tensor, threshold: float | None = None,
                      activation: str | None = "Sigmoid",
                      ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class sums over batch and pixels.

    Args:
        outputs: logits (B, C, H, W) (probabilities if ``activation`` is None), any float dtype.
        targets: (B, C, H, W) float {0, 1}, or (B, H, W) class indices (see module doc).
        threshold: binarize predictions after the activation; ``None`` keeps soft
            probabilities for Sigmoid and uses arg-max for Softmax2d.
        activation: ``"Sigmoid"``, ``"Softmax2d"`` or ``None``.
        ignore_index: target value whose pixels are left out.

    Returns:
        ``(intersection, outputs_sum, targets_sum)``, each float64 of shape (C,).
    """
    t, valid = prepare_targets(outputs, targets, ignore_index)
    o = activate(outputs, activation, threshold)
    if valid is not None:
        o = o * valid
    dims = (0, 2, 3)
    return ((o * t).sum(dims).double(), o.sum(dims).double(), t.sum(dims).double())


def _empty_scores_one(score: torch.Tensor, outputs_sum: torch.Tensor, targets_sum: torch.Tensor) -> torch.Tensor:
    """``score`` with the classes empty in both prediction and target set to 1."""
    return torch.where(outputs_sum + targets_sum == 0, torch.ones_like(score), score)


def dice_from_sums(intersection: torch.Tensor, outputs_sum: torch.Tensor, targets_sum: torch.Tensor,
                   eps: float = 1e-7) -> torch.Tensor:
    """Dice ``2I / (O + T + eps)`` per class (C,); a class empty in both prediction and target scores 1."""
    return _empty_scores_one(2 * intersection / (outputs_sum + targets_sum + eps), outputs_sum, targets_sum)


def iou_from_sums(intersection: torch.Tensor, outputs_sum: torch.Tensor, targets_sum: torch.Tensor,
                  eps: float = 1e-7) -> torch.Tensor:
    """IoU ``I / (O + T - I + eps)`` per class (C,); a class empty in both prediction and target scores 1."""
    score = intersection / (outputs_sum + targets_sum - intersection + eps)
    return _empty_scores_one(score, outputs_sum, targets_sum)


def _scores(from_sums, outputs: torch.Tensor, targets: torch.Tensor, eps: float, threshold: float | None,
            activation: str | None, ignore_index: int | None, per_class: bool) -> torch.Tensor:
    """The core of :func:`dice` and :func:`iou`: ``from_sums`` of :func:`segmentation_sums`, per class (C,) or
    their mean."""
    scores = from_sums(*segmentation_sums(outputs, targets, threshold, activation, ignore_index), eps=eps)
    return scores if per_class else scores.mean()


def dice(outputs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7, threshold: float | None = None,
         activation: str | None = "Sigmoid", ignore_index: int | None = None,
         per_class: bool = False) -> torch.Tensor:
    """Dice score of logits (B, C, H, W) against targets, from :func:`segmentation_sums`.

    Args:
        outputs: logits (B, C, H, W) (probabilities if ``activation`` is None).
        targets: (B, C, H, W) float {0, 1}, or (B, H, W) class indices.
        threshold: binarize predictions after the activation (see :func:`segmentation_sums`).
        activation: ``"Sigmoid"``, ``"Softmax2d"`` or ``None``.
        ignore_index: target value whose pixels are left out.
        eps: added to the denominator.
        per_class: return the (C,) per-class scores instead of their mean.

    Returns:
        A float64 scalar (mean over classes) or, with ``per_class``, a (C,) tensor.
    """
    return _scores(dice_from_sums, outputs, targets, eps, threshold, activation, ignore_index, per_class)


def iou(outputs: torch.Tensor, targets: torch.Tensor, classes: list[str] | None = None, eps: float = 1e-7,
        threshold: float | None = None, activation: str | None = "Sigmoid", ignore_index: int | None = None,
        per_class: bool | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
    """IoU (Jaccard) of logits (B, C, H, W) against targets, from :func:`segmentation_sums`.

    Args:
        outputs: logits (B, C, H, W) (probabilities if ``activation`` is None).
        targets: (B, C, H, W) float {0, 1}, or (B, H, W) class indices.
        threshold: binarize predictions after the activation (see :func:`segmentation_sums`).
        activation: ``"Sigmoid"``, ``"Softmax2d"`` or ``None``.
        ignore_index: target value whose pixels are left out.
        classes: optional names of the C classes; as in Catalyst 19.x, giving them asks for
            per-class values (unless ``per_class=False``).
        eps: added to the denominator.
        per_class: return per-class scores instead of their mean; ``None``: per class exactly
            when ``classes`` is given.

    Returns:
        A float64 scalar (mean over classes); with ``per_class`` a (C,) tensor, or a dict
        ``class name -> value`` when ``classes`` names them.

    Raises:
        ValueError: ``classes`` does not have C names, or the inputs do not fit.
    """
    if classes is not None and outputs.dim() == 4 and len(classes) != outputs.shape[1]:
        raise ValueError(f"{len(classes)} class names {list(classes)!r} for outputs of shape "
                         f"{tuple(outputs.shape)} ({outputs.shape[1]} classes)")
    per_class = classes is not None if per_class is None else per_class
    scores = _scores(iou_from_sums, outputs, targets, eps, threshold, activation, ignore_index, per_class)
    if per_class and classes is not None:
        return {name: scores[i] for i, name in enumerate(classes)}
    return scores


jaccard = iou  # Catalyst 19.x name
