"""UnetBridge: one more, deeper stage appended after the encoder."""

from __future__ import annotations

import torch
import torch.nn as nn

from segzoo.blocks import get_block
from segzoo.bridges.base import BridgeSpec, register_bridge


@register_bridge("unet")
class UnetBridge(BridgeSpec):
    """Append a (max-pool, conv block) stage at twice the deepest stride.

    Args:
        in_channels: encoder channels, shallow to deep.
        in_strides: encoder strides.
        out_channels: channels of the new deepest feature (default: 2x the deepest input).
        complexity: extra convs in the block.
        activation: activation name.
        norm: normalization name.

    Shapes: [..., (B, C, H/s, W/s)] -> [..., (B, C, H/s, W/s), (B, out_channels, H/2s, W/2s)].
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], out_channels: int | None = None,
                 complexity: int = 1, activation: str = "relu", norm: str = "bn") -> None:
        super().__init__(in_channels, in_strides)
        self.bridge_channels = out_channels or 2 * in_channels[-1]
        self.block = nn.Sequential(
            nn.MaxPool2d(2),
            get_block(in_channels[-1], self.bridge_channels, complexity=complexity, activation=activation, norm=norm),
        )
        self.declare_outputs(self.in_channels + [self.bridge_channels], self.in_strides + [2 * self.in_strides[-1]])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return the features with the new deepest one appended."""
        return list(features) + [self.block(features[-1])]
