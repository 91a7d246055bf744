"""Focal loss, and Catalyst 19.x's name for its binary form."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.losses.base import multiclass_targets
from segzoo.metrics import prepare_targets


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``, averaged over valid pixels.

    Args:
        mode: ``"binary"`` (sigmoid, targets (B, C, H, W)) or ``"multiclass"`` (softmax, (B, H, W) class
            indices; float class maps of whole numbers are accepted).
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
            targets = multiclass_targets(logits, targets)
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
