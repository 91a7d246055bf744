"""smp 0.6's losses under smp's names, modes, defaults and values (``segzoo.smp.losses``).

These give the numbers ``segmentation_models_pytorch.losses`` gives on the same tensors (values and
gradients), so an smp training script keeps its curves. Where segzoo's own losses
(:mod:`segzoo.losses`) define a loss differently, both stay: here smp's definition, there segzoo's.
The differences, in short:

- Dice / Jaccard / Tversky: ``smooth=0`` by default, scores over the whole batch per class, and a class
  absent from the batch's targets contributes 0 (segzoo: ``smooth=1``, its false positives count).
  Tversky's ``gamma`` is applied to the mean over classes.
- Focal, ``"multiclass"``/``"multilabel"``: the mean over classes of a per-class *sigmoid* focal loss
  (one-vs-rest; segzoo's multiclass focal loss is a softmax one), ``alpha=None`` by default.
- Lovasz, ``"multilabel"``: one hinge over all channels together (segzoo: the mean of per-channel hinges).

Shapes (as smp): logits ``(N, C, H, W)``; targets ``(N, H, W)`` class indices for ``"multiclass"``,
``(N, 1, H, W)`` or ``(N, H, W)`` for ``"binary"``, ``(N, C, H, W)`` for ``"multilabel"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.losses.lovasz import _lovasz_grad, _lovasz_hinge_flat

__all__ = ["BINARY_MODE", "MULTICLASS_MODE", "MULTILABEL_MODE", "DiceLoss", "JaccardLoss", "TverskyLoss",
           "FocalLoss", "LovaszLoss", "SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss", "MCCLoss"]

#: one foreground class: targets (N, H, W) or (N, 1, H, W), logits (N, 1, H, W)
BINARY_MODE: str = "binary"
#: mutually exclusive classes: targets (N, H, W) class indices, logits (N, C, H, W)
MULTICLASS_MODE: str = "multiclass"
#: independent classes: targets (N, C, H, W) of 0/1, logits (N, C, H, W)
MULTILABEL_MODE: str = "multilabel"
_MODES = (BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE)


def _check_mode(what: str, mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"{what}: mode must be one of {_MODES} (or smp.losses.BINARY_MODE, ...), got {mode!r}")


def _float_list(values: Sequence[float] | torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=dtype)


class _OverlapLoss(nn.Module):
    """Soft Tversky-family loss per class, over the batch and the pixels (smp's Dice/Jaccard/Tversky)."""

    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 1.0

    def __init__(self, mode: str, classes: Sequence[int] | None = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: int | None = None, eps: float = 1e-7,
                 class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        _check_mode(name, mode)
        if mode == BINARY_MODE and class_weights is not None:
            raise ValueError(f"{name}: class_weights are not supported with mode='binary'")
        if mode == BINARY_MODE and classes is not None:
            raise ValueError(f"{name}: classes= (masking classes) is not supported with mode='binary'")
        self.mode, self.from_logits, self.smooth, self.eps = mode, from_logits, smooth, eps
        self.log_loss, self.ignore_index = log_loss, ignore_index
        self.classes = _float_list(classes, torch.long)
        self.class_weights = _float_list(class_weights, torch.float)

    def _probs_targets(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, P) probabilities and (N, C, P) targets, ignored pixels zeroed in both."""
        if y_true.shape[0] != y_pred.shape[0]:
            raise ValueError(f"{type(self).__name__}: batch sizes differ: y_pred {tuple(y_pred.shape)}, "
                             f"y_true {tuple(y_true.shape)}")
        if self.from_logits:  # through log-space, as smp: stable for large logits
            y_pred = y_pred.log_softmax(dim=1).exp() if self.mode == MULTICLASS_MODE else F.logsigmoid(y_pred).exp()
        n, c = y_true.shape[0], y_pred.shape[1]
        if self.mode == MULTICLASS_MODE:
            y_true = y_true.reshape(n, -1)
            y_pred = y_pred.reshape(n, c, -1)
            if self.ignore_index is None:
                return y_pred, F.one_hot(y_true.long(), c).permute(0, 2, 1)
            valid = y_true != self.ignore_index
            onehot = F.one_hot((y_true * valid).long(), c).permute(0, 2, 1) * valid.unsqueeze(1)
            return y_pred * valid.unsqueeze(1), onehot
        channels = 1 if self.mode == BINARY_MODE else c
        y_true = y_true.reshape(n, channels, -1)
        y_pred = y_pred.reshape(n, channels, -1)
        if self.ignore_index is not None:
            valid = y_true != self.ignore_index
            y_pred, y_true = y_pred * valid, y_true * valid
        return y_pred, y_true

    def score(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-class soft Tversky index (C,) of probabilities and targets (N, C, P)."""
        dims = (0, 2)
        p_sum, t_sum = probs.sum(dims), targets.sum(dims)
        tp = (p_sum + t_sum - (probs - targets).abs().sum(dims)) / 2  # equals sum(p * t) for 0/1 targets
        fp, fn = p_sum - tp, t_sum - tp
        return (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(self.eps)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``y_pred`` (N, C, H, W) and ``y_true`` (see the module docstring)."""
        probs, targets = self._probs_targets(y_pred, y_true)
        targets = targets.to(probs.dtype)
        scores = self.score(probs, targets)
        loss = -torch.log(scores.clamp_min(self.eps)) if self.log_loss else 1.0 - scores
        loss = loss * (targets.sum((0, 2)) > 0).to(loss.dtype)  # classes absent from the targets: 0
        weights = self.class_weights
        if self.classes is not None:
            loss = loss[self.classes]
            weights = weights[self.classes] if weights is not None else None
        if weights is not None:
            weights = weights.to(loss.device)
            mean = (loss * weights).sum() / weights.sum()
        else:
            mean = loss.mean()
        return mean if self.gamma == 1.0 else mean ** self.gamma


class DiceLoss(_OverlapLoss):
    """smp's DiceLoss: ``1 - dice`` per class (or ``-log(dice)`` with ``log_loss``), averaged over classes.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        classes: class indices kept in the average (not with ``"binary"``).
        log_loss: ``-log(score)`` instead of ``1 - score``.
        from_logits: apply softmax (multiclass) / sigmoid to ``y_pred`` first.
        smooth: added to numerator and denominator (smp's default 0; segzoo's DiceLoss: 1).
        ignore_index: target value whose pixels are left out.
        eps: lower bound of the denominator.
        class_weights: per-class weights of the average (not with ``"binary"``).
    """


class JaccardLoss(_OverlapLoss):
    """smp's JaccardLoss (soft IoU): arguments as :class:`DiceLoss`."""

    alpha = 1.0
    beta = 1.0


class TverskyLoss(_OverlapLoss):
    """smp's TverskyLoss: ``alpha`` weighs false positives, ``beta`` false negatives; the mean over classes
    is raised to ``gamma``. Other arguments as :class:`DiceLoss`."""

    def __init__(self, mode: str, classes: Sequence[int] | None = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: int | None = None, eps: float = 1e-7,
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 class_weights: Sequence[float] | None = None) -> None:
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma


def _sigmoid_focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float | None,
                   reduction: str | None, normalized: bool, reduced_threshold: float | None) -> torch.Tensor:
    """Binary focal loss of logits and 0/1 targets of the same shape."""
    targets = targets.to(dtype=logits.dtype, device=logits.device)
    nll = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    pt = torch.exp(-nll)
    if reduced_threshold is None:
        focal = (1.0 - pt).pow(gamma)
    else:
        focal = torch.where(pt < reduced_threshold, torch.ones_like(pt), ((1.0 - pt) / reduced_threshold).pow(gamma))
    loss = focal * nll
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if normalized:
        loss = loss / focal.sum().clamp_min(1e-6)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "batchwise_mean":
        return loss.sum(0)
    return loss


class FocalLoss(nn.Module):
    """smp's FocalLoss: a sigmoid focal loss; for ``"multiclass"`` / ``"multilabel"`` the mean over classes of
    the one-vs-rest focal loss of each class (segzoo's own multiclass FocalLoss is a softmax one).

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        alpha: weight of positives (``None``: none, smp's default).
        gamma: focusing power.
        ignore_index: target value whose pixels are left out.
        from_logits: ``False``: ``y_pred`` are probabilities (clamped to ``[eps, 1 - eps]``).
        eps: clamp of probabilities.
        reduction: ``"mean"``, ``"sum"``, ``"batchwise_mean"`` or ``"none"`` (per class, before the class mean).
        normalized: divide by the sum of the focal terms (normalized focal loss).
        reduced_threshold: reduced focal loss threshold.
        class_weights: per-class weights of the class mean (not with ``"binary"``).
    """

    def __init__(self, mode: str, alpha: float | None = None, gamma: float = 2.0, ignore_index: int | None = None,
                 from_logits: bool = True, eps: float = 1e-7, reduction: str | None = "mean",
                 normalized: bool = False, reduced_threshold: float | None = None,
                 class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        _check_mode("FocalLoss", mode)
        if mode == BINARY_MODE and class_weights is not None:
            raise ValueError("FocalLoss: class_weights are not supported with mode='binary'")
        self.mode, self.alpha, self.gamma, self.ignore_index = mode, alpha, gamma, ignore_index
        self.from_logits, self.eps, self.reduction = from_logits, eps, reduction
        self.normalized, self.reduced_threshold = normalized, reduced_threshold
        self.class_weights = _float_list(class_weights, torch.float)

    def _focal(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _sigmoid_focal(logits, targets, self.gamma, self.alpha, self.reduction, self.normalized,
                              self.reduced_threshold)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Loss of ``y_pred`` (N, C, H, W) and ``y_true``; a scalar with ``reduction="mean"``/``"sum"``."""
        if not self.from_logits:
            y_pred = y_pred.clamp(self.eps, 1 - self.eps)
            y_pred = torch.log(y_pred) if self.mode == MULTICLASS_MODE else torch.log(y_pred / (1 - y_pred))
        if self.mode == BINARY_MODE:
            y_true, y_pred = y_true.reshape(-1), y_pred.reshape(-1)
            if self.ignore_index is not None:
                keep = y_true != self.ignore_index
                y_pred, y_true = y_pred[keep], y_true[keep]
            return self._focal(y_pred, y_true)
        losses = []
        for c in range(y_pred.shape[1]):
            target = (y_true == c).long() if self.mode == MULTICLASS_MODE else y_true[:, c]
            pred = y_pred[:, c]
            if self.ignore_index is not None:
                keep = y_true != self.ignore_index
                keep = keep if self.mode == MULTICLASS_MODE else keep[:, c]
                pred, target = pred[keep], target[keep]
            losses.append(self._focal(pred, target))
        per_class = torch.stack(losses)
        if self.class_weights is None:
            return per_class.mean()
        weights = self.class_weights.to(per_class.device)
        return (per_class * weights).sum() / weights.sum()


def _per_image(fn, *tensors: torch.Tensor, per_image: bool) -> torch.Tensor:
    if not per_image:
        return fn(*tensors)
    losses = [fn(*(t[i:i + 1] for t in tensors)) for i in range(tensors[0].shape[0])]
    return torch.stack(losses).mean() if losses else tensors[0].sum() * 0.0


class LovaszLoss(nn.Module):
    """smp's LovaszLoss: Lovasz hinge for ``"binary"`` and ``"multilabel"`` (one hinge over every channel
    together: segzoo's multilabel LovaszLoss averages per-channel hinges), Lovasz-softmax over the classes
    present for ``"multiclass"``.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        per_image: the loss per image, then averaged (else over the whole batch).
        ignore_index: target value whose pixels are left out.
        from_logits: accepted as smp does (smp's LovaszLoss always takes logits).
    """

    def __init__(self, mode: str, per_image: bool = False, ignore_index: int | None = None,
                 from_logits: bool = True) -> None:
        super().__init__()
        _check_mode("LovaszLoss", mode)
        self.mode, self.per_image, self.ignore_index = mode, per_image, ignore_index

    def _hinge(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, labels = logits.reshape(-1), labels.reshape(-1)
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            logits, labels = logits[keep], labels[keep]
        return _lovasz_hinge_flat(logits, labels.to(logits.dtype))

    def _softmax(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = torch.movedim(probs, 1, -1).reshape(-1, probs.shape[1])
        labels = labels.reshape(-1)
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            probs, labels = probs[keep], labels[keep]
        losses = []
        for c in range(probs.shape[1]):
            fg = (labels == c).to(probs.dtype)
            if fg.sum() == 0:
                continue
            errors_sorted, perm = torch.sort((fg - probs[:, c]).abs(), descending=True)
            losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])))
        return torch.stack(losses).mean() if losses else probs.sum() * 0.0

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Scalar loss of logits ``y_pred`` (N, C, H, W) and ``y_true``."""
        if self.mode == MULTICLASS_MODE:
            return _per_image(self._softmax, y_pred.softmax(dim=1), y_true, per_image=self.per_image)
        return _per_image(self._hinge, y_pred, y_true, per_image=self.per_image)


class SoftBCEWithLogitsLoss(nn.Module):
    """``BCEWithLogitsLoss`` with label smoothing (``smooth_factor=0.1``: targets 1 -> 0.9, 0 -> 0.1) and an
    ``ignore_index`` (pixels zeroed, still counted by the mean, as smp).

    Args:
        weight: per-element rescaling weight (broadcast), as ``torch.nn.BCEWithLogitsLoss``.
        ignore_index: target value whose pixels contribute 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        smooth_factor: label smoothing factor (``None``: none).
        pos_weight: weight of positives, as ``torch.nn.BCEWithLogitsLoss``.

    Shapes: ``y_pred`` and ``y_true`` of the same shape, e.g. (N, 1, H, W).
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int | None = -100,
                 reduction: str = "mean", smooth_factor: float | None = None,
                 pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index, self.reduction, self.smooth_factor = ignore_index, reduction, smooth_factor
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``y_pred`` and targets ``y_true`` (same shape)."""
        soft = y_true if self.smooth_factor is None else \
            (1 - y_true) * self.smooth_factor + y_true * (1 - self.smooth_factor)
        loss = F.binary_cross_entropy_with_logits(y_pred, soft, self.weight, pos_weight=self.pos_weight,
                                                  reduction="none")
        if self.ignore_index is not None:
            loss = loss * (y_true != self.ignore_index).type_as(loss)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class SoftCrossEntropyLoss(nn.Module):
    """Cross-entropy with label smoothing: ``(1 - s) * nll + s / C * sum_c(-log p_c)``; pixels whose target is
    ``ignore_index`` contribute 0 (and are counted by the mean, as smp).

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        smooth_factor: ``s`` (``None``: 0; smp 0.6 fails on ``None``).
        ignore_index: target value whose pixels contribute 0.
        dim: the class dimension of ``y_pred``.

    Shapes: ``y_pred`` (N, C, H, W) logits, ``y_true`` (N, H, W) class indices.
    """

    def __init__(self, reduction: str = "mean", smooth_factor: float | None = None, ignore_index: int | None = -100,
                 dim: int = 1) -> None:
        super().__init__()
        self.reduction, self.smooth_factor, self.ignore_index, self.dim = reduction, smooth_factor, ignore_index, dim

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``y_pred`` and class indices ``y_true``."""
        dim, eps = self.dim, self.smooth_factor or 0.0
        log_probs = F.log_softmax(y_pred, dim=dim)
        target = y_true.unsqueeze(dim) if y_true.dim() == log_probs.dim() - 1 else y_true
        if self.ignore_index is not None:
            ignored = target == self.ignore_index
            nll = (-log_probs.gather(dim, target.masked_fill(ignored, 0))).masked_fill(ignored, 0.0)
            smooth = (-log_probs.sum(dim=dim, keepdim=True)).masked_fill(ignored, 0.0)
        else:
            nll = -log_probs.gather(dim, target).squeeze(dim)
            smooth = -log_probs.sum(dim=dim, keepdim=True).squeeze(dim)
        if self.reduction == "sum":
            nll, smooth = nll.sum(), smooth.sum()
        elif self.reduction == "mean":
            nll, smooth = nll.mean(), smooth.mean()
        return (1.0 - eps) * nll + eps / log_probs.shape[dim] * smooth


class MCCLoss(nn.Module):
    """``1 - MCC`` (Matthews correlation coefficient) of probabilities and binary targets, over the batch.

    Args:
        eps: added to each of TP, TN, FP, FN (a batch of one class stays defined).

    Shapes: ``y_pred`` probabilities (N, 1, H, W) or (N, H, W) (smp applies no sigmoid), ``y_true`` alike.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Scalar loss."""
        n = y_true.shape[0]
        p, t = y_pred.reshape(n, 1, -1), y_true.reshape(n, 1, -1)
        tp = (p * t).sum() + self.eps
        tn = ((1 - p) * (1 - t)).sum() + self.eps
        fp = (p * (1 - t)).sum() + self.eps
        fn = ((1 - p) * t).sum() + self.eps
        mcc = (tp * tn - fp * fn) / torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return 1.0 - mcc
