"""UPerNet decoder: a pyramid pooling module on the deepest feature, an FPN over all levels, fused by concatenation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from segzoo.blocks import ConvBnAct, make_upsample
from segzoo.decoders.base import DecoderSpec, register_decoder, stride_ratio
from segzoo.decoders.psp import PyramidPooling, pyramid_avg_pool


@register_decoder("upernet")
class UPerNetDecoder(DecoderSpec):
    """UPerNet (Xiao et al. 2018): PPM on the deepest feature, top-down FPN, all levels fused at the finest.

    1. PPM: the deepest feature pooled to ``pool_sizes`` (one pass, :func:`pyramid_avg_pool`), each
       projected by 1x1 conv + ReLU and resized back, concatenated with it, 3x3 conv -> ``channels``.
    2. FPN: per shallower level a 1x1 lateral conv; top-down, each level adds the upsampled deeper one,
       then a 3x3 conv.
    3. Fusion: every level upsampled (bilinear) to the finest used stride, concatenated, 3x3 conv.

    Args:
        in_channels: feature channels, shallow to deep.
        in_strides: feature strides.
        channels: width of the PPM, every pyramid level and the output.
        pool_sizes: PPM pooling sizes.
        min_stride: features finer than this stride are not used (4: the stride-4..32 levels of a ResNet).
        fuse_kernel: kernel size of the fusion conv (3 as in UPerNet; 1 is much cheaper).

    Shapes: features -> [(B, channels, H / s, W / s)], s the finest used stride.
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: int = 256,
                 pool_sizes: Sequence[int] = (1, 2, 3, 6), min_stride: int = 4, fuse_kernel: int = 3) -> None:
        super().__init__(in_channels, in_strides)
        last = len(self.in_channels) - 1
        self.first = next((i for i, s in enumerate(self.in_strides) if s >= min_stride), last)
        deep = self.in_channels[-1]
        self.ppm = nn.ModuleList(PyramidPooling(deep, channels, s) for s in pool_sizes)
        self.ppm_fuse = ConvBnAct(deep + channels * len(pool_sizes), channels, 3)
        levels = range(self.first, last)
        self.laterals = nn.ModuleList(ConvBnAct(self.in_channels[i], channels, 1) for i in levels)
        self.convs = nn.ModuleList(ConvBnAct(channels, channels, 3) for _ in levels)
        # top-down steps (level i+1 -> i) and resizes to the finest used level, finest first
        self.top_down = nn.ModuleList(
            make_upsample("bilinear", channels, stride_ratio(self.in_strides[i + 1], self.in_strides[i], "UPerNet"))
            for i in levels)
        self.to_finest = nn.ModuleList(
            make_upsample("bilinear", channels, stride_ratio(self.in_strides[i], self.in_strides[self.first], "UPerNet"))
            for i in range(self.first, last + 1))
        self.fuse = ConvBnAct(channels * (last + 1 - self.first), channels, fuse_kernel)
        self._out = channels

    @property
    def out_channels(self) -> list[int]:
        return [self._out]

    @property
    def out_strides(self) -> list[int]:
        return [self.in_strides[self.first]]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """PPM, top-down pyramid, fusion at the finest used stride."""
        x = features[-1]
        pooled = pyramid_avg_pool(x, [b.size for b in self.ppm])
        p = self.ppm_fuse(torch.cat([x] + [b.project(q, x.shape[-2:]) for b, q in zip(self.ppm, pooled)], dim=1))
        pyramid = [p]
        for k in range(len(self.laterals) - 1, -1, -1):
            p = self.laterals[k](features[self.first + k]) + self.top_down[k](p)
            pyramid.append(self.convs[k](p))
        pyramid = pyramid[::-1]  # finest first
        return [self.fuse(torch.cat([up(level) for up, level in zip(self.to_finest, pyramid)], dim=1))]
