"""What every segzoo loss shares: the target modes, argument checks, and probabilities in float32."""

from __future__ import annotations

from typing import Any

import torch

from segzoo.metrics import class_indices, prepare_targets

MODES = ("binary", "multilabel", "multiclass")


def check_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def multiclass_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Check the inputs of a multi-class loss and return its targets as (B, H, W) class indices.

    Logits must be (B, C, H, W) with C >= 2 and targets (B, H, W). Integer (or bool) targets are
    returned as they are; float targets (Catalyst 19.x scripts passed class maps as 0./1./2. floats)
    are accepted when every value is a whole number and returned as int64
    (:func:`segzoo.metrics.class_indices`). Index range and ``ignore_index`` are checked by the caller.

    Raises:
        ValueError: other shapes, or float targets holding a value that is not a whole number
            (a soft or probability map is not a class map), in one line.
    """
    if logits.dim() != 4 or logits.shape[1] < 2:
        raise ValueError(f"mode='multiclass' needs logits (B, C, H, W) with C >= 2, got {tuple(logits.shape)}")
    if targets.dim() != 3:
        raise ValueError(f"mode='multiclass' takes (B, H, W) class indices, got targets "
                         f"{tuple(targets.shape)} of dtype {targets.dtype}")
    return class_indices(targets) if targets.is_floating_point() else targets


def check_catalyst_args(mode: str, activation: Any, threshold: Any, what: str) -> None:
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


def probs_and_targets(logits: torch.Tensor, targets: torch.Tensor, mode: str, ignore_index: int | None):
    """float32 probabilities, float32 targets of the same shape, and the valid-pixel mask (or None)."""
    if mode == "multiclass":
        targets = multiclass_targets(logits, targets)
    t, valid = prepare_targets(logits, targets, ignore_index)
    x = logits.float()
    p = torch.softmax(x, dim=1) if mode == "multiclass" else torch.sigmoid(x)
    if valid is not None:
        p = p * valid
        t = t * valid
    return p, t, valid
