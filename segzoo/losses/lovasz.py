"""Lovasz-hinge and Lovasz-softmax losses (a convex surrogate of 1 - IoU), and Catalyst 19.x's names for them."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.losses.base import MODES, multiclass_targets


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
            shape) or ``"multiclass"`` (softmax over C; (B, H, W) class indices, integer or float
            holding whole numbers, or one-hot float (B, C, H, W) targets, as Catalyst 19.x took them).
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
            targets = multiclass_targets(logits, targets)
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


class _CatalystLovasz(LovaszLoss):
    """The one body of Catalyst 19.x's Lovasz names: ``LovaszLoss(mode=<the class's mode>)`` with ``ignore=``.

    Args:
        per_image: compute per image and average.
        ignore: target value whose pixels are left out (segzoo: ``ignore_index``).
    """

    catalyst_mode: str

    def __init__(self, per_image: bool = False, ignore: int | None = None) -> None:
        super().__init__(self.catalyst_mode, ignore_index=ignore, per_image=per_image)


class LovaszLossBinary(_CatalystLovasz):
    """Catalyst 19.x name of ``LovaszLoss(mode="binary")``: Lovasz hinge on logits (B, 1, H, W).

    Args:
        per_image: compute per image and average.
        ignore: target value whose pixels are left out (segzoo: ``ignore_index``).
    """

    catalyst_mode = "binary"


class LovaszLossMultiClass(_CatalystLovasz):
    """Catalyst 19.x name of ``LovaszLoss(mode="multiclass")``: Lovasz-softmax over C classes.

    Targets are (B, H, W) class indices (integer, or float class maps of whole numbers such as
    0., 1., 2.) or one-hot float (B, C, H, W). Unlike Catalyst, the
    logits go through a softmax first (Catalyst fed raw logits in as probabilities).

    Args:
        per_image: compute per image and average.
        ignore: target value whose pixels are left out (segzoo: ``ignore_index``).
    """

    catalyst_mode = "multiclass"


class LovaszLossMultiLabel(_CatalystLovasz):
    """Catalyst 19.x name of ``LovaszLoss(mode="multilabel")``: the Lovasz hinge of each channel, averaged.

    Args:
        per_image: compute per image and average.
        ignore: target value whose pixels are left out (segzoo: ``ignore_index``).
    """

    catalyst_mode = "multilabel"
