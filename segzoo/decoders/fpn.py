"""FPNDecoder: a feature pyramid (lateral 1x1 convs and a top-down sum)."""

from __future__ import annotations

import torch
import torch.nn as nn

from segzoo.blocks import make_upsample
from segzoo.decoders.base import DecoderSpec, register_decoder, stride_ratio


@register_decoder("fpn")
class FPNDecoder(DecoderSpec):
    """Feature pyramid over the deepest ``num_levels`` features.

    Args:
        in_channels: feature channels, shallow to deep.
        in_strides: feature strides.
        pyramid_channels: channels of every pyramid level.
        num_levels: how many of the deepest features build the pyramid (default 4: P2..P5
            for a ResNet).
        upsample: top-down upsampling mode (``"nearest"`` default, or any of
            :func:`segzoo.blocks.make_upsample`'s modes).

    Shapes: features -> [(B, pyramid_channels, H / s, W / s) for the used strides s], shallow to deep.
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], pyramid_channels: int = 128,
                 num_levels: int = 4, upsample: str = "nearest") -> None:
        super().__init__(in_channels, in_strides)
        if not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"FPNDecoder: num_levels must be an int >= 1, got {num_levels!r}")
        self.num_levels = min(num_levels, len(self.in_channels))
        self.pyramid_channels = pyramid_channels
        used = range(len(self.in_channels) - self.num_levels, len(self.in_channels))
        self.lateral = nn.ModuleList(nn.Conv2d(self.in_channels[i], pyramid_channels, 1) for i in used)
        strides = [self.in_strides[i] for i in used]
        self.ups = nn.ModuleList(
            make_upsample(upsample, pyramid_channels, stride_ratio(strides[k + 1], strides[k], "FPNDecoder"))
            for k in range(len(strides) - 1)
        )
        self.declare_outputs([pyramid_channels] * self.num_levels, strides)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Build the pyramid; returns levels shallow to deep."""
        features = features[len(features) - self.num_levels:]
        p = self.lateral[-1](features[-1])
        pyramid = [p]
        for k in range(self.num_levels - 2, -1, -1):
            p = self.ups[k](p) + self.lateral[k](features[k])
            pyramid.append(p)
        return pyramid[::-1]
