"""UPerNet decoder: a pyramid pooling module on the deepest feature, an FPN over all levels, fused at the finest stride."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.blocks import ConvBnAct, make_norm, make_upsample
from segzoo.decoders.base import DecoderSpec, register_decoder, stride_ratio
from segzoo.decoders.psp import PyramidPooling, pyramid_avg_pool

FUSE_MODES = ("levels", "concat")
FEATURE_NORMS = (None, "layernorm")


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of every pixel of an NCHW map (smp's UPerNet normalizes its inputs so).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` over its channel dimension."""
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class NormPyramidPooling(PyramidPooling):
    """A PSP branch whose 1x1 projection is Conv-Norm-ReLU (smp's UPerNet's), else as :class:`PyramidPooling`.

    Shapes: (B, C, h, w) -> (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, size: int, norm: str = "bn") -> None:
        super().__init__(in_channels, out_channels, size)
        self.conv = ConvBnAct(in_channels, out_channels, 1, norm=norm)


@register_decoder("upernet")
class UPerNetDecoder(DecoderSpec):
    """UPerNet (Xiao et al. 2018): PPM on the deepest feature, top-down FPN, all levels fused at the finest.

    1. PPM: the deepest feature pooled to ``pool_sizes`` (one pass, :func:`pyramid_avg_pool`), each
       projected by 1x1 conv + ReLU and resized back, concatenated with it, 3x3 conv -> ``channels``.
    2. FPN: per shallower level a 1x1 lateral conv; top-down, each level adds the upsampled deeper one,
       then a 3x3 conv.
    3. Fusion at the finest used stride, one of two ways (``fuse``):

       - ``"concat"`` (the paper's): every level upsampled (bilinear), concatenated, one k x k conv;
       - ``"levels"`` (default): the same k x k conv split by input level (a conv over a concatenation
         is the sum of per-part convs) and each part applied at its own level's resolution before the
         upsampling, then summed -> BatchNorm -> ReLU. For k = 1 the two are the same function (a 1x1
         conv commutes with bilinear resizing); for k = 3 the coarse parts see a wider context. It
         costs a third of the concat fusion's FLOPs (the coarse parts run on 4x, 16x, 64x fewer
         pixels) and avoids the (B, 4C, H/4, W/4) concatenation; quality at equal budget is in
         BENCHMARKS.md.

    Args:
        in_channels: feature channels, shallow to deep.
        in_strides: feature strides.
        channels: width of the PPM, every pyramid level and the output.
        pool_sizes: PPM pooling sizes.
        min_stride: features finer than this stride are not used (4: the stride-4..32 levels of a ResNet).
        fuse_kernel: kernel size of the fusion conv (3 as in UPerNet; 1 is much cheaper).
        fuse: ``"levels"`` (per-level convs, summed) or ``"concat"`` (the paper's concatenation).
        norm: normalization of the lateral, pyramid and fusion convs (the PPM's 3x3 conv keeps BatchNorm).
        ppm_norm: ``None`` (default: the PPM's 1x1 branch convs have a bias, no norm) or a norm name
            (Conv-Norm-ReLU branches, :class:`NormPyramidPooling`, as smp's UPerNet).
        feature_norm: ``None`` (default) or ``"layernorm"``: each used feature first normalized over its
            channels (:class:`ChannelLayerNorm`, eps 1e-6, as smp's UPerNet).

    Shapes: features -> [(B, channels, H / s, W / s)], s the finest used stride.
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: int = 256,
                 pool_sizes: Sequence[int] = (1, 2, 3, 6), min_stride: int = 4, fuse_kernel: int = 3,
                 fuse: str = "levels", norm: str = "bn", ppm_norm: str | None = None,
                 feature_norm: str | None = None) -> None:
        super().__init__(in_channels, in_strides)
        if fuse not in FUSE_MODES:
            raise ValueError(f"UPerNetDecoder: fuse must be one of {', '.join(FUSE_MODES)}, got {fuse!r}")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"UPerNetDecoder: feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
        if not isinstance(fuse_kernel, int) or fuse_kernel < 1 or fuse_kernel % 2 == 0:
            raise ValueError(f"UPerNetDecoder: fuse_kernel must be an odd int >= 1, got {fuse_kernel!r}")
        last = len(self.in_channels) - 1
        self.first = next((i for i, s in enumerate(self.in_strides) if s >= min_stride), last)
        deep = self.in_channels[-1]
        # empty without feature_norm: no keys, the default model's state dict is unchanged
        self.feature_norms = nn.ModuleList(ChannelLayerNorm(c, eps=1e-6) for c in self.in_channels[self.first:]
                                           if feature_norm is not None)
        self.ppm = nn.ModuleList(PyramidPooling(deep, channels, s) if ppm_norm is None else
                                 NormPyramidPooling(deep, channels, s, ppm_norm) for s in pool_sizes)
        self.ppm_fuse = ConvBnAct(deep + channels * len(pool_sizes), channels, 3)
        levels = range(self.first, last)
        self.laterals = nn.ModuleList(ConvBnAct(self.in_channels[i], channels, 1, norm=norm) for i in levels)
        self.convs = nn.ModuleList(ConvBnAct(channels, channels, 3, norm=norm) for _ in levels)
        # top-down steps (level i+1 -> i) and resizes to the finest used level, finest first
        self.top_down = nn.ModuleList(
            make_upsample("bilinear", channels, stride_ratio(self.in_strides[i + 1], self.in_strides[i], "UPerNet"))
            for i in levels)
        self.to_finest = nn.ModuleList(
            make_upsample("bilinear", channels, stride_ratio(self.in_strides[i], self.in_strides[self.first], "UPerNet"))
            for i in range(self.first, last + 1))
        n_levels = last + 1 - self.first
        self.fuse_mode = fuse
        if fuse == "concat":
            self.fuse = ConvBnAct(channels * n_levels, channels, fuse_kernel, norm=norm)
        else:
            self.fuse_parts = nn.ModuleList(
                nn.Conv2d(channels, channels, fuse_kernel, padding=fuse_kernel // 2, bias=False)
                for _ in range(n_levels))
            self.fuse_norm = make_norm(norm, channels)
            self.fuse_act = nn.ReLU(inplace=True)
        self.declare_outputs([channels], [self.in_strides[self.first]])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """PPM, top-down pyramid, fusion at the finest used stride."""
        if len(self.feature_norms) > 0:
            normed = list(features[:self.first])
            for k, norm in enumerate(self.feature_norms):
                normed.append(norm(features[self.first + k]))
            features = normed
        x = features[-1]
        pooled = pyramid_avg_pool(x, [b.size for b in self.ppm])
        p = self.ppm_fuse(torch.cat([x] + [b.project(q, x.shape[-2:]) for b, q in zip(self.ppm, pooled)], dim=1))
        pyramid = [p]
        for k in range(len(self.laterals) - 1, -1, -1):
            # the upsampled map first: the sum takes its memory format (as smp's UPerNet, whose laterals may
            # read channels_last views of its layer-normalized features)
            p = self.top_down[k](p) + self.laterals[k](features[self.first + k])
            pyramid.append(self.convs[k](p))
        pyramid = pyramid[::-1]  # finest first
        if self.fuse_mode == "concat":
            return [self.fuse(torch.cat([up(level) for up, level in zip(self.to_finest, pyramid)], dim=1))]
        fused = self.fuse_parts[0](pyramid[0])
        for k, (up, part) in enumerate(zip(self.to_finest, self.fuse_parts)):
            if k > 0:
                fused = fused + up(part(pyramid[k]))
        return [self.fuse_act(self.fuse_norm(fused))]
