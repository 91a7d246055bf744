"""The plain Unet encoder (no pretrained weights)."""

from __future__ import annotations

import torch
import torch.nn as nn

from segzoo.blocks import get_block
from segzoo.encoders.base import EncoderSpec, register_encoder


@register_encoder("unet")
class UnetEncoder(EncoderSpec):
    """Classic Unet encoder: a conv block at full resolution, then (max-pool, conv block) stages.

    Channels double at every stage: ``num_channels * 2**i``; strides are ``2**i``.

    Args:
        in_channels: C of the input image.
        num_channels: channels of the first block.
        num_blocks: number of stages (>= 1).
        complexity: extra convs per block (see :func:`segzoo.blocks.get_block`).
        activation: activation name.
        norm: normalization name.

    Shapes: (B, in_channels, H, W) -> [(B, num_channels * 2**i, H / 2**i, W / 2**i) for i < num_blocks].
    """

    def __init__(self, in_channels: int = 3, num_channels: int = 32, num_blocks: int = 4, complexity: int = 1,
                 activation: str = "relu", norm: str = "bn") -> None:
        super().__init__()
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be an int >= 1, got {num_blocks!r}")
        self.in_channels = in_channels
        channels = [num_channels * 2**i for i in range(num_blocks)]
        self.stages = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(channels):
            block = get_block(prev, ch, complexity=complexity, activation=activation, norm=norm)
            self.stages.append(block if i == 0 else nn.Sequential(nn.MaxPool2d(2), block))
            prev = ch
        self._channels = channels

    @property
    def out_channels(self) -> list[int]:
        return list(self._channels)

    @property
    def out_strides(self) -> list[int]:
        return [2**i for i in range(len(self._channels))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> one feature map per stage, shallow to deep."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
