"""Segformer's all-MLP decoder: every level projected to one width, resized to the finest used stride, fused."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.blocks import ConvBnAct, make_norm, make_upsample
from segzoo.decoders.base import DecoderSpec, register_decoder, stride_ratio

FUSE_MODES = ("levels", "concat")


@register_decoder("segformer")
class SegformerDecoder(DecoderSpec):
    """The all-MLP decoder of SegFormer (Xie et al. 2021), on any multi-scale encoder.

    Every level of stride >= ``min_stride`` goes through a per-pixel linear layer (a 1x1 conv) to
    ``channels``, is resized bilinearly to the finest used stride, and the levels are fused by a linear
    layer + BatchNorm + ReLU. Two equal ways to compute it (``fuse``):

    - ``"concat"`` (the paper's, and smp's): per level a linear layer, the levels resized and concatenated
      (L x ``channels``), one 1x1 conv + BatchNorm + ReLU at the finest stride;
    - ``"levels"`` (this class's default; the Segformer models default to ``"concat"``, their row of
      :data:`segzoo.architectures.ARCHITECTURES`, which trained better at an equal budget): the same function
      class with fewer operations. The fusion's 1x1 conv over a
      concatenation is the sum of one 1x1 conv per level, a 1x1 conv commutes with bilinear resizing,
      and two linear layers in a row are one: so each level gets one 1x1 conv (C_i -> ``channels``) at
      its own resolution, the levels are resized and summed, then BatchNorm + ReLU. The same functions
      can be learned (one C_i x ``channels`` matrix per level instead of a product of two); the
      L x ``channels`` -> ``channels`` conv at the finest stride, the decoder's main cost, is gone, and
      so is the (B, L x ``channels``, H / 4, W / 4) concatenation.

    A stride-2 feature (a ResNet's stem) is not used with the default ``min_stride`` 4; smp's Segformer on
    a ResNet resizes it down to stride 4 and uses it.

    Args:
        in_channels: feature channels, shallow to deep.
        in_strides: feature strides.
        channels: width of every level and of the output (256 as smp; the paper uses 256 for MiT-B0/B1,
            768 for larger encoders).
        min_stride: features finer than this stride are not used (when none is that coarse: the deepest).
        fuse: ``"levels"`` (per-level linear layers, summed) or ``"concat"`` (the paper's).
        out_stride: resize every used level to the size of the feature at this stride (one of the used
            strides; finer levels are resized down bilinearly): smp's Segformer on a ResNet uses the stride-2
            feature (``min_stride=2``) at stride 4. Default: the finest used stride.

    Shapes: features -> [(B, channels, H / s, W / s)], s = ``out_stride`` or the finest used stride.
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: int = 256, min_stride: int = 4,
                 fuse: str = "levels", out_stride: int | None = None) -> None:
        super().__init__(in_channels, in_strides)
        if fuse not in FUSE_MODES:
            raise ValueError(f"SegformerDecoder: fuse must be one of {', '.join(FUSE_MODES)}, got {fuse!r}")
        last = len(self.in_channels) - 1
        self.first = next((i for i, s in enumerate(self.in_strides) if s >= min_stride), last)
        if out_stride is not None and out_stride not in self.in_strides[self.first:]:
            raise ValueError(f"SegformerDecoder: out_stride must be one of the used strides "
                             f"{self.in_strides[self.first:]}, got {out_stride!r}")
        # the level whose size every level is resized to (-1: the finest, by fixed factors)
        self.target = -1 if out_stride is None else self.in_strides.index(out_stride)
        levels = range(self.first, last + 1)
        finest = self.in_strides[self.first]
        self.resize = nn.ModuleList(
            make_upsample("bilinear", channels, stride_ratio(self.in_strides[i], finest, "SegformerDecoder"))
            for i in levels)
        self.fuse_mode = fuse
        if fuse == "concat":
            self.linears = nn.ModuleList(nn.Conv2d(self.in_channels[i], channels, 1) for i in levels)
            self.fuse = ConvBnAct(channels * len(levels), channels, 1)
        else:
            self.linears = nn.ModuleList(nn.Conv2d(self.in_channels[i], channels, 1, bias=False) for i in levels)
            self.norm = make_norm("bn", channels)
            self.act = nn.ReLU(inplace=True)
        self._out = channels

    @property
    def out_channels(self) -> list[int]:
        return [self._out]

    @property
    def out_strides(self) -> list[int]:
        return [self.in_strides[self.first if self.target < 0 else self.target]]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Project every used level, resize to the finest used stride (or ``out_stride``) and fuse."""
        used = features[self.first:]
        if self.target < 0:
            parts = [up(linear(f)) for up, linear, f in zip(self.resize, self.linears, used)]
        else:
            size = features[self.target].shape[-2:]
            parts = [F.interpolate(linear(f), size=[int(size[0]), int(size[1])], mode="bilinear",
                                   align_corners=False) for linear, f in zip(self.linears, used)]
        if self.fuse_mode == "concat":
            return [self.fuse(torch.cat(parts, dim=1))]
        fused = parts[0]
        for part in parts[1:]:
            fused = fused + part
        return [self.act(self.norm(fused))]
