"""Segmentation losses, safe under fp16/bf16 autocast (computed in float32).

Targets follow :mod:`segzoo.metrics`: (B, C, H, W) float for ``mode="binary"`` /
``"multilabel"``, (B, H, W) class indices for ``mode="multiclass"``. Every loss maps
logits (B, C, H, W) and targets to a scalar.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo._legacy import legacy_getattr
from segzoo.metrics import prepare_targets
from segzoo.registry import Registry

MODES = ("binary", "multilabel", "multiclass")


def __getattr__(name: str):
    """Catalyst 19.x losses segzoo does not carry raise an ImportError naming the replacement."""
    return legacy_getattr(__name__, name)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_multiclass(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Multi-class losses need >= 2 channels and (B, H, W) integer class indices."""
    if logits.dim() != 4 or logits.shape[1] < 2:
        raise ValueError(f"mode='multiclass' needs logits (B, C, H, W) with C >= 2, got {tuple(logits.shape)}")
    if targets.dim() != 3 or targets.is_floating_point():
        raise ValueError(f"mode='multiclass' takes (B, H, W) integer class indices, got targets "
                         f"{tuple(targets.shape)} of dtype {targets.dtype}")


def _check_catalyst_args(mode: str, activation: Any, threshold: Any, what: str) -> None:
    """Catalyst 19.x's ``activation=`` / ``threshold=`` loss arguments: accepted where they mean what
    ``mode`` already does, refused with the segzoo spelling otherwise."""
    if threshold is not None:
        raise ValueError(f"{what}(threshold={threshold!r}) makes the loss non-differentiable (zero gradients); "
                         f"drop threshold (binarize in DiceCallback/IouCallback(threshold=...) instead)")
    if activation == "auto":
        return
    expected = "Softmax2d" if mode == "multiclass" else "Sigmoid"
    if activation != expected:
        hint = ("mode='multiclass' with (B, H, W) class-index targets" if activation == "Softmax2d" else
                "mode='binary'/'multilabel'" if activation == "Sigmoid" else
                "logits: segzoo losses apply the activation themselves")
        raise ValueError(f"{what}(mode={mode!r}, activation={activation!r}) is not supported; use {hint}")


def _probs_and_targets(logits: torch.Tensor, targets: torch.Tensor, mode: str, ignore_index: int | None):
    """float32 probabilities, float32 targets of the same shape, and the valid-pixel mask (or None)."""
    if mode == "multiclass":
        _check_multiclass(logits, targets)
    t, valid = prepare_targets(logits, targets, ignore_index)
    x = logits.float()
    p = torch.softmax(x, dim=1) if mode == "multiclass" else torch.sigmoid(x)
    if valid is not None:
        p = p * valid
        t = t * valid
    return p, t, valid


class _OverlapLoss(nn.Module):
    """Shared body of the soft Dice and IoU losses: 1 - score, averaged over classes."""

    def __init__(self, mode: str = "binary", smooth: float = 1.0, eps: float = 1e-7,
                 ignore_index: int | None = None, class_weights: list[float] | None = None, *,
                 threshold: float | None = None, activation: str | None = "auto") -> None:
        super().__init__()
        _check_mode(mode)
        _check_catalyst_args(mode, activation, threshold, type(self).__name__)
        self.mode = mode
        self.smooth = smooth
        self.eps = eps
        self.ignore_index = ignore_index
        if class_weights is not None and (len(class_weights) == 0 or min(class_weights) < 0
                                          or sum(class_weights) <= 0):
            raise ValueError(f"class_weights must be non-negative with a positive sum, got {class_weights!r}")
        self.register_buffer("class_weights", None if class_weights is None else
                             torch.tensor(class_weights, dtype=torch.float32), persistent=False)

    def score(self, inter: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of logits (B, C, H, W) against targets; a scalar."""
        if self.class_weights is not None and logits.dim() == 4 and logits.shape[1] != self.class_weights.numel():
            raise ValueError(f"{self.class_weights.numel()} class_weights for logits of shape "
                             f"{tuple(logits.shape)} ({logits.shape[1]} classes)")
        p, t, _ = _probs_and_targets(logits, targets, self.mode, self.ignore_index)
        dims = (0, 2, 3)
        inter = (p * t).sum(dims)
        total = p.sum(dims) + t.sum(dims)
        loss = 1.0 - self.score(inter, total)
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

    def score(self, inter: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return (2 * inter + self.smooth) / (total + self.smooth).clamp_min(self.eps)


class IoULoss(_OverlapLoss):
    """Soft IoU (Jaccard) loss ``1 - (I + smooth) / (P + T - I + smooth)``; arguments as :class:`DiceLoss`."""

    def score(self, inter: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return (inter + self.smooth) / (total - inter + self.smooth).clamp_min(self.eps)


class _BCEOverlapLoss(nn.Module):
    def __init__(self, overlap: nn.Module, bce_weight: float, overlap_weight: float,
                 ignore_index: int | None) -> None:
        super().__init__()
        if bce_weight == 0 and overlap_weight == 0:
            raise ValueError(f"{type(self).__name__}: the BCE and overlap weights cannot both be 0")
        self.overlap = overlap
        self.bce_weight = bce_weight
        self.overlap_weight = overlap_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Weighted sum of BCE-with-logits and the overlap loss; a scalar."""
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
        super().__init__(DiceLoss("binary", smooth=smooth, eps=eps, ignore_index=ignore_index, threshold=threshold,
                                  activation=activation), bce_weight, dice_weight, ignore_index)


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
        super().__init__(IoULoss("binary", smooth=smooth, eps=eps, ignore_index=ignore_index, threshold=threshold,
                                 activation=activation), bce_weight, iou_weight, ignore_index)


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``, averaged over valid pixels.

    Args:
        mode: ``"binary"`` (sigmoid, targets (B, C, H, W)) or ``"multiclass"`` (softmax, (B, H, W)).
        gamma: focusing parameter.
        alpha: weight of positives in binary mode (``None``: no weighting); unused in multiclass.
        ignore_index: target value whose pixels are left out.
    """

    def __init__(self, mode: str = "binary", gamma: float = 2.0, alpha: float | None = 0.25,
                 ignore_index: int | None = None) -> None:
        super().__init__()
        if mode not in ("binary", "multiclass"):
            raise ValueError(f"FocalLoss mode must be 'binary' or 'multiclass', got {mode!r}")
        self.mode, self.gamma, self.alpha, self.ignore_index = mode, gamma, alpha, ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of logits (B, C, H, W); a scalar."""
        if self.mode == "multiclass":
            _check_multiclass(logits, targets)
        t, valid = prepare_targets(logits, targets, self.ignore_index)
        x = logits.float()
        if self.mode == "binary":
            logp = -F.binary_cross_entropy_with_logits(x, t, reduction="none")
            loss = -((1 - logp.exp()) ** self.gamma) * logp
            if self.alpha is not None:
                loss = loss * (self.alpha * t + (1 - self.alpha) * (1 - t))
        else:
            logp = (torch.log_softmax(x, dim=1) * t).sum(1, keepdim=True)
            loss = -((1 - logp.exp()) ** self.gamma) * logp
        if valid is not None:
            return (loss * valid).sum() / (valid.sum() * loss.shape[1]).clamp_min(1)
        return loss.mean()


def _lovasz_grad(sorted_gt: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors."""
    gts = sorted_gt.sum()
    intersection = gts - sorted_gt.cumsum(0)
    union = gts + (1 - sorted_gt).cumsum(0)
    jaccard = 1.0 - intersection / union
    if sorted_gt.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def _lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    return (F.relu(errors_sorted) * _lovasz_grad(labels[perm])).sum()  # not torch.dot: autocast-safe


def _lovasz_softmax_flat(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """probs (P, C), labels (P,) long; mean over the classes present in ``labels``."""
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).float()
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append((errors_sorted * _lovasz_grad(fg[perm])).sum())
    return torch.stack(losses).mean() if losses else probs.sum() * 0.0


def _onehot_to_indices(targets: torch.Tensor, logits: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """One-hot float targets (B, C, H, W) -> (B, H, W) class indices; an all-zero pixel becomes ``ignore_index``."""
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(f"one-hot targets of shape {tuple(targets.shape)} do not fit logits {tuple(logits.shape)}")
    total = targets.sum(1)
    empty = total == 0
    if not ((targets == 0) | (targets == 1)).all() or ((total != 1) & ~empty).any():
        raise ValueError("multiclass targets (B, C, H, W) must be one-hot (one 1 per pixel); for multi-label "
                         "targets use LovaszLoss(mode='multilabel') / LovaszLossMultiLabel")
    indices = targets.argmax(1)
    if empty.any():
        if ignore_index is None:
            raise ValueError("one-hot targets have pixels of no class; set ignore_index (Catalyst: ignore=) "
                             "or give every pixel a class")
        indices = torch.where(empty, torch.full_like(indices, ignore_index), indices)
    return indices


class LovaszLoss(nn.Module):
    """Lovasz-hinge (binary, multilabel) or Lovasz-softmax (multiclass) loss: a convex surrogate of 1 - IoU.

    Args:
        mode: ``"binary"`` (logits (B, 1, H, W), targets (B, 1, H, W) or (B, H, W)),
            ``"multilabel"`` (the binary loss of each channel, averaged; targets of the logits'
            shape) or ``"multiclass"`` (softmax over C; (B, H, W) class indices, or one-hot float
            (B, C, H, W) targets as Catalyst 19.x took them).
        ignore_index: target value whose pixels are left out.
        per_image: compute per image and average (else over the whole batch).
    """

    def __init__(self, mode: str = "binary", ignore_index: int | None = None, per_image: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"LovaszLoss mode must be one of {MODES}, got {mode!r}")
        self.mode, self.ignore_index, self.per_image = mode, ignore_index, per_image

    def _one(self, logits: torch.Tensor, targets: torch.Tensor, mode: str) -> torch.Tensor:
        x = logits.float()
        if mode == "binary":
            t = targets.float().reshape(-1)
            x = x.reshape(-1)
            keep = t != self.ignore_index if self.ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
            return _lovasz_hinge_flat(x[keep], t[keep])
        probs = torch.softmax(x, dim=1).permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        t = targets.reshape(-1).long()
        keep = t != self.ignore_index if self.ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        return _lovasz_softmax_flat(probs[keep], t[keep])

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of logits (B, C, H, W); a scalar."""
        if logits.dim() != 4:
            raise ValueError(f"logits must be (B, C, H, W), got shape {tuple(logits.shape)}")
        if self.mode == "multilabel":
            if tuple(targets.shape) != tuple(logits.shape):
                raise ValueError(f"multilabel LovaszLoss needs targets of the logits' shape {tuple(logits.shape)}, "
                                 f"got {tuple(targets.shape)}")
            return torch.stack([self._forward("binary", logits[:, c:c + 1], targets[:, c])
                                for c in range(logits.shape[1])]).mean()
        if self.mode == "multiclass" and targets.dim() == 4 and targets.is_floating_point():
            targets = _onehot_to_indices(targets, logits, self.ignore_index)
        return self._forward(self.mode, logits, targets)

    def _forward(self, mode: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if mode == "binary" and logits.shape[1] != 1:
            raise ValueError(f"binary LovaszLoss needs one output channel, got logits {tuple(logits.shape)}")
        if mode == "binary" and targets.dim() == 4 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if mode == "multiclass":
            _check_multiclass(logits, targets)
        if targets.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"targets of shape {tuple(targets.shape)} do not fit logits {tuple(logits.shape)}")
        if mode == "multiclass":
            valid = targets if self.ignore_index is None else targets[targets != self.ignore_index]
            if valid.numel() and (valid.min() < 0 or valid.max() >= logits.shape[1]):
                raise ValueError(f"target class indices must be in [0, {logits.shape[1] - 1}], found "
                                 f"[{int(valid.min())}, {int(valid.max())}]")
        if self.per_image:
            return torch.stack([self._one(lg[None], tg[None], mode) for lg, tg in zip(logits, targets)]).mean()
        return self._one(logits, targets, mode)


class LovaszLossBinary(LovaszLoss):
    """Catalyst 19.x name of ``LovaszLoss(mode="binary")``: Lovasz hinge on logits (B, 1, H, W).

    Args:
        per_image: compute per image and average.
        ignore: target value whose pixels are left out (segzoo: ``ignore_index``).
    """

    def __init__(self, per_image: bool = False, ignore: int | None = None) -> None:
        super().__init__("binary", ignore_index=ignore, per_image=per_image)


class LovaszLossMultiClass(LovaszLoss):
    """Catalyst 19.x name of ``LovaszLoss(mode="multiclass")``: Lovasz-softmax over C classes.

    Targets are (B, H, W) class indices or one-hot float (B, C, H, W). Unlike Catalyst, the
    logits go through a softmax first (Catalyst fed raw logits in as probabilities).

    Args:
        per_image: compute per image and average.
        ignore: target value whose pixels are left out (segzoo: ``ignore_index``).
    """

    def __init__(self, per_image: bool = False, ignore: int | None = None) -> None:
        super().__init__("multiclass", ignore_index=ignore, per_image=per_image)


class LovaszLossMultiLabel(LovaszLoss):
    """Catalyst 19.x name of ``LovaszLoss(mode="multilabel")``: the Lovasz hinge of each channel, averaged.

    Args:
        per_image: compute per image and average.
        ignore: target value whose pixels are left out (segzoo: ``ignore_index``).
    """

    def __init__(self, per_image: bool = False, ignore: int | None = None) -> None:
        super().__init__("multilabel", ignore_index=ignore, per_image=per_image)


class FocalLossBinary(FocalLoss):
    """Catalyst 19.x name of ``FocalLoss(mode="binary")`` (sigmoid focal loss, mean over pixels).

    Args:
        ignore: target value whose pixels are left out (segzoo: ``ignore_index``).
        reduced: only ``False`` (Catalyst's reduced focal loss is not in segzoo).
        gamma: focusing parameter.
        alpha: weight of positives.
        threshold: only used by the reduced variant; must stay at its default 0.5.
        reduction: only ``"mean"``.
    """

    def __init__(self, ignore: int | None = None, reduced: bool = False, gamma: float = 2.0, alpha: float = 0.25,
                 threshold: float = 0.5, reduction: str = "mean") -> None:
        if reduced or threshold != 0.5:
            raise ValueError("FocalLossBinary(reduced=True, threshold=...) is not supported; "
                             "use FocalLossBinary(gamma=..., alpha=...) / FocalLoss(mode='binary')")
        if reduction != "mean":
            raise ValueError(f"FocalLossBinary(reduction={reduction!r}) is not supported: only 'mean'")
        super().__init__("binary", gamma=gamma, alpha=alpha, ignore_index=ignore)


LOSSES = Registry("loss")  # a read-only Mapping: LOSSES[name], name in LOSSES, dict(LOSSES)
register_loss = LOSSES.register
create_loss = LOSSES.create
list_losses = LOSSES.names
for _loss in (DiceLoss, IoULoss, BCEDiceLoss, BCEIoULoss, FocalLoss, LovaszLoss, LovaszLossBinary, LovaszLossMultiClass,
              LovaszLossMultiLabel, FocalLossBinary, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss):
    register_loss(_loss.__name__, _loss)


def get_loss(name: str, **params: Any) -> nn.Module:
    """Build the loss registered as ``name`` in :data:`LOSSES` with ``params`` (the same as :func:`create_loss`).

    Raises:
        KeyError: unknown name (close matches and valid names listed).
    """
    return create_loss(name, **params)


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
            ``"multiclass"`` (softmax, (B, H, W) class indices).
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

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of logits (B, C, H, W) against targets; a scalar."""
        if self.class_weights is not None and logits.dim() == 4 and logits.shape[1] != self.class_weights.numel():
            raise ValueError(f"{self.class_weights.numel()} class_weights for logits of shape "
                             f"{tuple(logits.shape)} ({logits.shape[1]} classes)")
        p, t, _ = _probs_and_targets(logits, targets, self.mode, self.ignore_index)
        dims = (0, 2, 3)
        inter = (p * t).sum(dims)
        fp = p.sum(dims) - inter
        fn = t.sum(dims) - inter
        score = (inter + self.smooth) / (inter + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(self.eps)
        loss = 1.0 - score
        if self.gamma != 1.0:  # floored: x ** gamma has an infinite slope at 0 for gamma < 1
            loss = loss.clamp_min(self.eps) ** self.gamma
        if self.class_weights is not None:
            return (loss * self.class_weights).sum() / self.class_weights.sum()
        return loss.mean()


register_loss("TverskyLoss", TverskyLoss)
