"""The head contract."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn

from segzoo.parts import check_features
from segzoo.registry import Registry

HEADS = Registry("head")
register_head = HEADS.register
create_head = HEADS.create
list_heads = HEADS.names


class HeadSpec(ABC, nn.Module):
    """Base class of heads: decoder features in, full-resolution logits out.

    Args:
        in_channels: channels of the decoder features, shallow to deep.
        out_channels: number of classes.
        in_strides: strides of the decoder features.

    Shapes: list of (B, in_channels[i], H / in_strides[i], W / in_strides[i]) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: list[int], out_channels: int, in_strides: list[int]) -> None:
        super().__init__()
        check_features(list(in_channels), list(in_strides), type(self).__name__)
        if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
            raise ValueError(f"{type(self).__name__}: number of classes must be an int >= 1, got {out_channels!r}")
        self.in_channels = [int(c) for c in in_channels]
        self.in_strides = [int(s) for s in in_strides]
        self.out_channels = out_channels

    @abstractmethod
    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Map features to logits (B, out_channels, H, W)."""
