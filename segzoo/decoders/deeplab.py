"""DeepLab decoders: atrous spatial pyramid pooling (ASPP) on the deepest feature.

DeepLabV3 stops there (ASPP and a 3x3 conv, at the deepest stride); DeepLabV3+ fuses it with a stride-4 skip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from segzoo.blocks import ConvBnAct, SeparableConvBnAct, make_norm, make_upsample
from segzoo.decoders.atrous import conv_in_bounds
from segzoo.decoders.base import DecoderSpec, register_decoder, stride_ratio

# the stride at which atrous rates are given (DeepLabV3+'s default output stride)
RATES_STRIDE = 16


def scaled_rates(rates: Sequence[int], stride: int) -> list[int]:
    """Atrous ``rates`` given for output stride 16, scaled to a feature of ``stride`` (doubled at 8, halved at 32).

    Keeps the receptive field of each branch the same in input pixels, whatever the encoder's stride.
    """
    return [max(1, round(int(r) * RATES_STRIDE / stride)) for r in rates]


def _smp_separable(in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> nn.Sequential:
    """A separable Conv-BN-ReLU in smp's module layout ``((depthwise, pointwise), BN, ReLU)``: the same
    function as :class:`~segzoo.blocks.SeparableConvBnAct`. (B, C_in, h, w) -> (B, C_out, h, w)."""
    pad = dilation * (kernel_size // 2)
    return nn.Sequential(nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size, padding=pad, dilation=dilation, groups=in_channels,
                  bias=False), nn.Conv2d(in_channels, out_channels, 1, bias=False)),
        make_norm("bn", out_channels), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, dilated 3x3 branches, an image-pooling branch, 1x1 projection.

    The image-pooling branch is constant over the image, so its share of the projection is
    added as a per-image bias (B, C, 1, 1) instead of being broadcast and concatenated: the
    same function, without a (B, C, H, W) copy. That branch has no BatchNorm (one value per
    channel per image, as in :class:`~segzoo.decoders.psp.PyramidPooling`).

    Args:
        in_channels: C of the input feature.
        out_channels: C of every branch and of the output.
        rates: dilation of the 3x3 branches (as used, not rescaled).
        separable: depthwise-separable 3x3 branches (DeepLabV3+'s choice, much cheaper).
        dropout: Dropout2d rate on the output.
        style: ``"segzoo"`` (default) or ``"smp"``: smp's ASPP (Conv-BN-ReLU image-pooling branch, element-wise
            ``nn.Dropout``, separable branches in smp's module layout).

    Shapes: (B, in_channels, h, w) -> (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (12, 24, 36),
                 separable: bool = True, dropout: float = 0.5, style: str = "segzoo") -> None:
        super().__init__()
        if style not in ("segzoo", "smp"):
            raise ValueError(f"ASPP: style must be 'segzoo' or 'smp', got {style!r}")
        conv = _smp_separable if separable and style == "smp" else SeparableConvBnAct if separable else ConvBnAct
        self.rates = [int(r) for r in rates]
        self.branches = nn.ModuleList([ConvBnAct(in_channels, out_channels, 1)])
        self.branches.extend(conv(in_channels, out_channels, 3, dilation=r) for r in self.rates)
        self.pool = ConvBnAct(in_channels, out_channels, 1) if style == "smp" else \
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.project = nn.Conv2d(out_channels * len(self.branches), out_channels, 1, bias=False)
        self.project_pool = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.norm = make_norm("bn", out_channels)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Identity() if not dropout else nn.Dropout(dropout) if style == "smp" else \
            nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-rate context for ``x`` (B, C, h, w)."""
        pooled = self.project_pool(self.pool(x.mean(dim=(2, 3), keepdim=True)))  # (B, C_out, 1, 1)
        y = self.project(torch.cat([self._branch(branch, x) for branch in self.branches], dim=1)) + pooled
        return self.dropout(self.act(self.norm(y)))

    @staticmethod
    def _branch(branch: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # a separable branch's dilated depthwise conv without its all-padding taps (conv_in_bounds)
        if not isinstance(branch, SeparableConvBnAct):
            return branch(x)
        y = conv_in_bounds(branch[0], x)
        for layer in list(branch)[1:]:
            y = layer(y)
        return y


@register_decoder("deeplabv3plus")
class DeepLabV3PlusDecoder(DecoderSpec):
    """DeepLabV3+: ASPP on the deepest feature, upsampled to the low-level (stride-4) skip, 3x3 fusion.

    The deepest feature is whatever the encoder gives: a dilated ResNet (``output_stride`` 16
    or 8) keeps it at stride 16 or 8; encoders without dilation give it at their own deepest
    stride (32 for most), ASPP runs there and its output is upsampled to the skip all the same.
    The atrous rates are given for stride 16 and scaled to the real stride (see :func:`scaled_rates`).

    Args:
        in_channels: feature channels, shallow to deep (at least two features).
        in_strides: feature strides.
        out_channels: ASPP and decoder width.
        atrous_rates: dilations of the ASPP 3x3 branches at stride 16 (12, 24, 36 as in smp; the
            DeepLabV3 paper's 6, 12, 18 are another common choice).
        low_level_stride: the skip is the deepest non-last feature with a stride up to this (else the
            shallowest feature).
        low_level_channels: the skip is reduced to this many channels by a 1x1 conv (48 in the paper).
        separable: depthwise-separable 3x3 convs in ASPP and fusion.
        fuse_convs: 3x3 convs after concatenating the upsampled ASPP output and the skip.
        aspp_dropout: Dropout2d rate on the ASPP output.
        scale_rates: ``False``: ``atrous_rates`` are used as given, whatever the stride (smp's).
        aspp_style: ``"segzoo"`` or ``"smp"`` (see :class:`ASPP`).
        aspp_separable: separable ASPP branches (default: ``separable``); smp's fusion is always separable.
        aspp_conv: a separable 3x3 Conv-BN-ReLU after ASPP (smp's).
        align_corners: bilinear upsampling of the ASPP output with aligned corners (smp's).

    Shapes: features -> [(B, out_channels, H / s, W / s)], s the skip's stride.
    """

    min_features = 2

    def __init__(self, in_channels: list[int], in_strides: list[int], out_channels: int = 256,
                 atrous_rates: Sequence[int] = (12, 24, 36), low_level_stride: int = 4, low_level_channels: int = 48,
                 separable: bool = True, fuse_convs: int = 1, aspp_dropout: float = 0.5, scale_rates: bool = True,
                 aspp_style: str = "segzoo", aspp_separable: bool | None = None, aspp_conv: bool = False,
                 align_corners: bool = False) -> None:
        super().__init__(in_channels, in_strides)
        if not isinstance(fuse_convs, int) or fuse_convs < 1:
            raise ValueError(f"DeepLabV3PlusDecoder: fuse_convs must be an int >= 1, got {fuse_convs!r}")
        skips = [i for i, s in enumerate(self.in_strides[:-1]) if s <= low_level_stride]
        self.skip = skips[-1] if skips else 0
        deep_stride = self.in_strides[-1]
        rates = scaled_rates(atrous_rates, deep_stride) if scale_rates else list(atrous_rates)
        self.aspp = ASPP(self.in_channels[-1], out_channels, rates,
                         separable if aspp_separable is None else aspp_separable, aspp_dropout, aspp_style)
        self.aspp_conv = SeparableConvBnAct(out_channels, out_channels) if aspp_conv else nn.Identity()
        self.up = make_upsample("bilinear", out_channels,
                                stride_ratio(deep_stride, self.in_strides[self.skip], "DeepLabV3PlusDecoder"),
                                align_corners=align_corners)
        self.reduce = ConvBnAct(self.in_channels[self.skip], low_level_channels, 1)
        conv = SeparableConvBnAct if separable else ConvBnAct
        widths = [out_channels + low_level_channels] + [out_channels] * fuse_convs
        self.fuse = nn.Sequential(*(conv(a, b) for a, b in zip(widths, widths[1:])))
        self.declare_outputs([out_channels], [self.in_strides[self.skip]])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """ASPP on the deepest feature, fused with the low-level skip."""
        context = self.up(self.aspp_conv(self.aspp(features[-1])))
        return [self.fuse(torch.cat([context, self.reduce(features[self.skip])], dim=1))]


@register_decoder("deeplabv3")
class DeepLabV3Decoder(DecoderSpec):
    """DeepLabV3 (Chen et al. 2017): ASPP on the deepest feature, then a 3x3 conv, at the deepest stride.

    No skip: the head upsamples the logits from the deepest stride (8 for ``ResnetDeepLabV3``, whose
    ResNet is dilated to output stride 8 as smp's DeepLabV3 is). The atrous rates are given for stride
    16, as for :class:`DeepLabV3PlusDecoder`, and scaled to the real stride (:func:`scaled_rates`): the
    default (6, 12, 18) is the DeepLabV3 paper's at stride 16 and becomes (12, 24, 36), smp's, at stride 8.

    Args:
        in_channels: feature channels, shallow to deep (only the last is used).
        in_strides: feature strides.
        out_channels: ASPP and output width.
        atrous_rates: dilations of the ASPP 3x3 branches at stride 16.
        separable: depthwise-separable 3x3 ASPP branches (default, as DeepLabV3+'s). ``False`` gives the
            paper's and smp's DeepLabV3 plain 3x3 convs: on a resnet34 at 4x3x256x256, 218 GFLOP and
            26.0 M parameters instead of 192 GFLOP and 22.9 M.
        aspp_dropout: Dropout2d rate on the ASPP output.
        scale_rates: ``False``: ``atrous_rates`` are used as given, whatever the stride (smp's).
        aspp_style: ``"segzoo"`` or ``"smp"`` (see :class:`ASPP`).

    Shapes: [..., (B, C, H / s, W / s)] -> [(B, out_channels, H / s, W / s)], s the deepest stride.
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], out_channels: int = 256,
                 atrous_rates: Sequence[int] = (6, 12, 18), separable: bool = True,
                 aspp_dropout: float = 0.5, scale_rates: bool = True, aspp_style: str = "segzoo") -> None:
        super().__init__(in_channels, in_strides)
        rates = scaled_rates(atrous_rates, self.in_strides[-1]) if scale_rates else list(atrous_rates)
        self.aspp = ASPP(self.in_channels[-1], out_channels, rates, separable, aspp_dropout, aspp_style)
        self.conv = ConvBnAct(out_channels, out_channels, 3)
        self._out = out_channels

    @property
    def out_channels(self) -> list[int]:
        return [self._out]

    @property
    def out_strides(self) -> list[int]:
        return [self.in_strides[-1]]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """ASPP and a 3x3 conv on the deepest feature."""
        return [self.conv(self.aspp(features[-1]))]
