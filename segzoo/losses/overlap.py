"""Overlap losses: soft Dice, IoU and Tversky, and their sums with BCE."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.losses.base import check_catalyst_args, check_mode, probs_and_targets
from segzoo.metrics import prepare_targets


class _OverlapLoss(nn.Module):
    """Shared body of the soft Dice, IoU and Tversky losses: a per-class loss of a per-class score, averaged."""

    def __init__(self, mode: str = "binary", smooth: float = 1.0, eps: float = 1e-7,
                 ignore_index: int | None = None, class_weights: list[float] | None = None, *,
                 threshold: float | None = None, activation: str | None = "auto") -> None:
        super().__init__()
        check_mode(mode)
        check_catalyst_args(mode, activation, threshold, type(self).__name__)
        self.mode = mode
        self.smooth = smooth
        self.eps = eps
        self.ignore_index = ignore_index
        if class_weights is not None and (len(class_weights) == 0 or min(class_weights) < 0
                                          or sum(class_weights) <= 0):
            raise ValueError(f"class_weights must be non-negative with a positive sum, got {class_weights!r}")
        self.register_buffer("class_weights", None if class_weights is None else
                             torch.tensor(class_weights, dtype=torch.float32), persistent=False)

    def score(self, inter: torch.Tensor, p_sum: torch.Tensor, t_sum: torch.Tensor) -> torch.Tensor:
        """Per-class score (C,) from the per-class sums of ``p * t``, ``p`` and ``t``."""
        raise NotImplementedError

    def class_losses(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-class losses (C,) of per-class scores: ``1 - score``."""
        return 1.0 - scores

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of logits (B, C, H, W) against targets; a scalar."""
        if self.class_weights is not None and logits.dim() == 4 and logits.shape[1] != self.class_weights.numel():
            raise ValueError(f"{self.class_weights.numel()} class_weights for logits of shape "
                             f"{tuple(logits.shape)} ({logits.shape[1]} classes)")
        p, t, _ = probs_and_targets(logits, targets, self.mode, self.ignore_index)
        dims = (0, 2, 3)
        loss = self.class_losses(self.score((p * t).sum(dims), p.sum(dims), t.sum(dims)))
        if self.class_weights is not None:
            return (loss * self.class_weights).sum() / self.class_weights.sum()
        return loss.mean()


class DiceLoss(_OverlapLoss):
    """Soft Dice loss ``1 - (2I + smooth) / (P + T + smooth)`` per class, averaged.

    Args:
        mode: ``"binary"``, ``"multilabel"`` (sigmoid per channel) or ``"multiclass"`` (softmax).
        smooth: added to numerator and denominator (an empty class with an empty prediction scores 1).
        eps: floor of the denominator (Catalyst's ``eps``: guards against division by zero).
        ignore_index: target value whose pixels are left out.
        class_weights: optional weight per class (C,).
        threshold: Catalyst 19.x argument; only ``None`` (a thresholded loss has no gradient).
        activation: Catalyst 19.x argument: ``"auto"`` (from ``mode``), or the one ``mode``
            implies (``"Sigmoid"`` for binary/multilabel, ``"Softmax2d"`` for multiclass).
    """

    def score(self, inter: torch.Tensor, p_sum: torch.Tensor, t_sum: torch.Tensor) -> torch.Tensor:
        """Soft Dice per class (C,)."""
        return (2 * inter + self.smooth) / (p_sum + t_sum + self.smooth).clamp_min(self.eps)


class IoULoss(_OverlapLoss):
    """Soft IoU (Jaccard) loss ``1 - (I + smooth) / (P + T - I + smooth)``; arguments as :class:`DiceLoss`."""

    def score(self, inter: torch.Tensor, p_sum: torch.Tensor, t_sum: torch.Tensor) -> torch.Tensor:
        """Soft IoU per class (C,)."""
        return (inter + self.smooth) / (p_sum + t_sum - inter + self.smooth).clamp_min(self.eps)


class _BCEOverlapLoss(nn.Module):
    """The one body of the BCE + overlap losses: ``bce_weight * BCE + overlap_weight * overlap``.

    ``overlap`` is the soft overlap loss class (:class:`DiceLoss`, :class:`IoULoss`) built in binary
    mode with ``smooth`` / ``eps`` / ``ignore_index`` and the Catalyst 19.x arguments.
    """

    def __init__(self, overlap: type[_OverlapLoss], bce_weight: float, overlap_weight: float,
                 ignore_index: int | None, smooth: float, eps: float, threshold: float | None,
                 activation: str | None) -> None:
        super().__init__()
        if bce_weight == 0 and overlap_weight == 0:
            raise ValueError(f"{type(self).__name__}: the BCE and overlap weights cannot both be 0")
        self.overlap = overlap("binary", smooth=smooth, eps=eps, ignore_index=ignore_index, threshold=threshold,
                               activation=activation)
        self.bce_weight = bce_weight
        self.overlap_weight = overlap_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Weighted sum of BCE-with-logits and the overlap loss of logits (B, C, H, W); a scalar."""
        t, valid = prepare_targets(logits, targets, self.ignore_index)
        bce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
        if valid is not None:
            bce = (bce * valid).sum() / (valid.sum() * bce.shape[1]).clamp_min(1)
        else:
            bce = bce.mean()
        return self.bce_weight * bce + self.overlap_weight * self.overlap(logits, targets)


class BCEDiceLoss(_BCEOverlapLoss):
    """``bce_weight * BCE + dice_weight * Dice`` for binary / multi-label targets (B, C, H, W).

    Args:
        bce_weight: weight of the BCE-with-logits term.
        dice_weight: weight of the soft Dice term (not both 0).
        ignore_index: target value whose pixels are left out.
        smooth: Dice smoothing (see :class:`DiceLoss`).
        eps: Dice denominator floor (Catalyst 19.x's ``eps``).
        threshold: Catalyst 19.x argument; only ``None``.
        activation: Catalyst 19.x argument; ``"auto"`` or ``"Sigmoid"``.
    """

    def __init__(self, bce_weight: float = 0.5, dice_weight: float = 0.5, ignore_index: int | None = None,
                 smooth: float = 1.0, *, eps: float = 1e-7, threshold: float | None = None,
                 activation: str | None = "auto") -> None:
        super().__init__(DiceLoss, bce_weight, dice_weight, ignore_index, smooth, eps, threshold, activation)


class BCEIoULoss(_BCEOverlapLoss):
    """``bce_weight * BCE + iou_weight * IoU`` for binary / multi-label targets (B, C, H, W).

    Args:
        bce_weight: weight of the BCE-with-logits term.
        iou_weight: weight of the soft IoU term (not both 0).
        ignore_index: target value whose pixels are left out.
        smooth: IoU smoothing (see :class:`IoULoss`).
        eps: IoU denominator floor (Catalyst 19.x's ``eps``).
        threshold: Catalyst 19.x argument; only ``None``.
        activation: Catalyst 19.x argument; ``"auto"`` or ``"Sigmoid"``.
    """

    def __init__(self, bce_weight: float = 0.5, iou_weight: float = 0.5, ignore_index: int | None = None,
                 smooth: float = 1.0, *, eps: float = 1e-7, threshold: float | None = None,
                 activation: str | None = "auto") -> None:
        super().__init__(IoULoss, bce_weight, iou_weight, ignore_index, smooth, eps, threshold, activation)


class TverskyLoss(_OverlapLoss):
    """Tversky loss ``1 - (I + smooth) / (I + alpha * FP + beta * FN + smooth)`` per class, averaged.

    With soft predictions ``p`` and targets ``t`` summed over the batch and pixels of a class,
    ``I = sum(p * t)``, ``FP = sum(p) - I``, ``FN = sum(t) - I``. ``alpha = beta = 0.5`` is the
    soft Dice loss (:class:`DiceLoss` with ``smooth`` doubled); ``beta > alpha`` penalizes missed foreground more (thin or rare structures).
    ``gamma`` raises each class's loss to a power (focal Tversky; ``gamma < 1`` focuses on the
    hard classes).

    Args:
        alpha: weight of false positives.
        beta: weight of false negatives.
        gamma: exponent of each class's loss (1: plain Tversky).
        mode: ``"binary"``, ``"multilabel"`` (sigmoid per channel, targets (B, C, H, W)) or
            ``"multiclass"`` (softmax, (B, H, W) class indices; float class maps of whole numbers are accepted).
        smooth: added to numerator and denominator.
        eps: floor of the denominator.
        ignore_index: target value whose pixels are left out.
        class_weights: optional weight per class (C,).
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0, mode: str = "binary",
                 smooth: float = 1.0, eps: float = 1e-7, ignore_index: int | None = None,
                 class_weights: list[float] | None = None) -> None:
        super().__init__(mode, smooth=smooth, eps=eps, ignore_index=ignore_index, class_weights=class_weights)
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"TverskyLoss {name} must be a number >= 0, got {value!r}")
        if alpha + beta <= 0:
            raise ValueError(f"TverskyLoss needs alpha + beta > 0, got alpha={alpha!r}, beta={beta!r}")
        if not isinstance(gamma, (int, float)) or gamma <= 0:
            raise ValueError(f"TverskyLoss gamma must be a number > 0, got {gamma!r}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def score(self, inter: torch.Tensor, p_sum: torch.Tensor, t_sum: torch.Tensor) -> torch.Tensor:
        """Tversky index per class (C,): false positives ``p_sum - inter``, false negatives ``t_sum - inter``."""
        fp, fn = p_sum - inter, t_sum - inter
        return (inter + self.smooth) / (inter + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(self.eps)

    def class_losses(self, scores: torch.Tensor) -> torch.Tensor:
        """``(1 - score) ** gamma`` per class (floored: ``x ** gamma`` has an infinite slope at 0 for gamma < 1)."""
        loss = 1.0 - scores
        return loss.clamp_min(self.eps) ** self.gamma if self.gamma != 1.0 else loss
