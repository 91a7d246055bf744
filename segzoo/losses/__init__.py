"""Segmentation losses, safe under fp16/bf16 autocast (computed in float32).

Targets follow :mod:`segzoo.metrics`: (B, C, H, W) float for ``mode="binary"`` /
``"multilabel"``, (B, H, W) class indices for ``mode="multiclass"`` (int64, or float class maps
of whole numbers as Catalyst 19.x scripts passed them; other float values are refused in one
line). Every loss maps
logits (B, C, H, W) and targets to a scalar.

Overlap losses (Dice, IoU, Tversky, BCE + Dice/IoU) are in :mod:`~segzoo.losses.overlap`,
:class:`FocalLoss` in :mod:`~segzoo.losses.focal`, :class:`LovaszLoss` in
:mod:`~segzoo.losses.lovasz`; every one is registered by name in :data:`LOSSES` (for configs).
Catalyst 19.x losses segzoo does not carry raise an ImportError naming the replacement.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from segzoo._legacy import legacy_getattr
from segzoo.losses.base import MODES
from segzoo.losses.focal import FocalLoss, FocalLossBinary
from segzoo.losses.lovasz import LovaszLoss, LovaszLossBinary, LovaszLossMultiClass, LovaszLossMultiLabel
from segzoo.losses.overlap import BCEDiceLoss, BCEIoULoss, DiceLoss, IoULoss, TverskyLoss
from segzoo.registry import Registry

__all__ = ["MODES", "DiceLoss", "IoULoss", "TverskyLoss", "BCEDiceLoss", "BCEIoULoss", "FocalLoss", "FocalLossBinary",
           "LovaszLoss", "LovaszLossBinary", "LovaszLossMultiClass", "LovaszLossMultiLabel", "LOSSES",
           "register_loss", "create_loss", "list_losses", "get_loss"]


def __getattr__(name: str):
    """Catalyst 19.x losses segzoo does not carry raise an ImportError naming the replacement."""
    return legacy_getattr(__name__, name)


LOSSES = Registry("loss")  # a read-only Mapping: LOSSES[name], name in LOSSES, dict(LOSSES)
register_loss = LOSSES.register
create_loss = LOSSES.create
list_losses = LOSSES.names
for _loss in (DiceLoss, IoULoss, BCEDiceLoss, BCEIoULoss, FocalLoss, LovaszLoss, LovaszLossBinary, LovaszLossMultiClass,
              LovaszLossMultiLabel, FocalLossBinary, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss, TverskyLoss):
    register_loss(_loss.__name__, _loss)


def get_loss(name: str, **params: Any) -> nn.Module:
    """Build the loss registered as ``name`` in :data:`LOSSES` with ``params`` (the same as :func:`create_loss`).

    Raises:
        KeyError: unknown name (close matches and valid names listed).
    """
    return create_loss(name, **params)
