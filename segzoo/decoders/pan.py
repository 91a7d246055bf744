"""PAN decoder: feature pyramid attention on the deepest feature, global attention upsampling at each skip."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.blocks import ConvBnAct
from segzoo.decoders.base import DecoderSpec, check_positive_int, register_decoder
from segzoo.decoders.psp import adaptive_avg_pool

#: the resize modes of ``PANDecoder(interpolation=...)`` (smp's ``decoder_interpolation``)
PAN_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")


def resize_to(x: torch.Tensor, like: torch.Tensor, mode: str = "bilinear", align_corners: bool = False) -> torch.Tensor:
    """Resize of ``x`` (B, C, h, w) to ``like``'s spatial size (any sizes, traced and exported too).

    ``align_corners`` applies to ``"bilinear"`` only (smp's choice); the other modes resize without it.
    """
    if mode == "bilinear":
        return F.interpolate(x, size=like.shape[-2:], mode=mode, align_corners=align_corners)
    return F.interpolate(x, size=like.shape[-2:], mode=mode)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, relu: bool = True) -> nn.Sequential:
    """smp's PAN conv: Conv2d with bias -> BatchNorm -> ReLU (or none). (B, C_in, h, w) -> (B, C_out, h, w)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True) if relu else nn.Identity())


class _MapConv(nn.Sequential):
    """k x k conv with bias + ReLU on a small attention map (no norm: the pooled maps may be 1x1; ``norm``:
    BatchNorm between them, smp's)."""

    def __init__(self, in_channels: int, kernel_size: int, norm: bool = False) -> None:
        if norm:
            super().__init__(*_conv_bn_relu(in_channels, 1, kernel_size))
        else:
            super().__init__(nn.Conv2d(in_channels, 1, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True))


class FeaturePyramidAttention(nn.Module):
    """Feature pyramid attention (FPA): a 1x1 projection weighted by a one-channel U-shaped pyramid
    (7x7, 5x5, 3x3 convs on three levels, each half the previous one's size), plus a global-pooling branch.

    The pyramid's levels have fixed sizes: ``pyramid_size`` (the feature average-pooled to it), then max-pooled
    to 1/2 and 1/4 of it; the result is resized to the feature's size. For the default 4 and a stride-32
    feature of a 256 px image (8 x 8) these are the 1/2, 1/4, 1/8 levels of the paper; unlike halving the
    feature three times (smp's PAN refuses inputs under 128 px), every input size works, 1 x 1 features
    included, and exported programs (ONNX, ``torch.export``) keep dynamic sizes. The global branch and the
    pyramid convs have no BatchNorm (their maps may hold one value per channel).

    Args:
        in_channels: C of the feature.
        out_channels: C of the output.
        pyramid_size: size of the pyramid's first level (a multiple of 4); ``0``: the feature max-pooled to half
            its size, as smp's PAN (the feature must then be at least 8 x 8).
        smp_style: smp's blocks: BatchNorm after every conv (biases kept), pyramid resizes with aligned corners.

    Shapes: (B, in_channels, h, w) -> (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, pyramid_size: int = 4, smp_style: bool = False) -> None:
        super().__init__()
        if not isinstance(pyramid_size, int) or isinstance(pyramid_size, bool) or pyramid_size < 0 \
                or pyramid_size % 4:
            raise ValueError(f"FeaturePyramidAttention: pyramid_size must be a positive multiple of 4 (or 0: "
                             f"halve the feature), got {pyramid_size!r}")
        self.pyramid_size = pyramid_size
        self.align_corners = bool(smp_style)
        norm = bool(smp_style)
        self.mid = _conv_bn_relu(in_channels, out_channels, 1) if norm else ConvBnAct(in_channels, out_channels, 1)
        self.glob = _conv_bn_relu(in_channels, out_channels, 1) if norm else \
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.down1 = _MapConv(in_channels, 7, norm)
        self.down2 = _MapConv(1, 5, norm)
        self.down3 = nn.Sequential(_MapConv(1, 3, norm), _MapConv(1, 3, norm))
        self.lateral2 = _MapConv(1, 5, norm)
        self.lateral1 = _MapConv(1, 7, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pyramid-weighted projection of ``x`` plus its global context."""
        if self.pyramid_size:
            d1 = self.down1(adaptive_avg_pool(x, self.pyramid_size))
        else:
            if x.shape[-2] < 8 or x.shape[-1] < 8:
                raise ValueError(f"PAN (smp's pyramid): the deepest feature is {x.shape[-2]}x{x.shape[-1]}, it "
                                 f"must be at least 8x8 (inputs 8 times the encoder's output stride, as smp)")
            d1 = self.down1(F.max_pool2d(x, 2))
        d2 = self.down2(F.max_pool2d(d1, 2))
        d3 = self.down3(F.max_pool2d(d2, 2))
        align = self.align_corners
        a = self.lateral2(d2) + resize_to(d3, d2, "bilinear", align)
        a = self.lateral1(d1) + resize_to(a, d1, "bilinear", align)
        return self.mid(x) * resize_to(a, x, "bilinear", align) + self.glob(x.mean(dim=(2, 3), keepdim=True))


class GlobalAttentionUpsample(nn.Module):
    """Global attention upsample (GAU): the skip through a 3x3 Conv-BN-ReLU, weighted per channel by the
    deeper feature's global context (mean, 1x1 conv, sigmoid), plus the upsampled deeper feature.

    ``interpolation``: the resize mode of ``x`` (see :data:`PAN_INTERPOLATIONS`); ``smp_style``: BatchNorm after
    both convs (biases kept) and bilinear resizes with aligned corners, as smp's GAU.

    Shapes: (B, channels, h, w), (B, skip_channels, h*s, w*s) -> (B, channels, h*s, w*s).
    """

    def __init__(self, skip_channels: int, channels: int, interpolation: str = "bilinear",
                 smp_style: bool = False) -> None:
        super().__init__()
        self.mode, self.align_corners = interpolation, bool(smp_style)
        self.conv = _conv_bn_relu(skip_channels, channels, 3) if smp_style else ConvBnAct(skip_channels, channels, 3)
        gate = _conv_bn_relu(channels, channels, 1, relu=False)[:2] if smp_style else [nn.Conv2d(channels, channels, 1)]
        self.gate = nn.Sequential(*gate, nn.Sigmoid())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse ``x`` (deeper) into ``skip``."""
        return resize_to(x, skip, self.mode, self.align_corners) + \
            self.conv(skip) * self.gate(x.mean(dim=(2, 3), keepdim=True))


@register_decoder("pan")
class PANDecoder(DecoderSpec):
    """Pyramid Attention Network (Li et al. 2018): FPA on the deepest feature, then from deep to shallow a GAU
    per skip level down to ``min_stride``.

    Args:
        in_channels: feature channels, shallow to deep.
        in_strides: feature strides.
        channels: width of the FPA and every GAU.
        pyramid_size: size of the FPA pyramid's first level (see :class:`FeaturePyramidAttention`).
        min_stride: skips finer than this stride are not used (4: the head upsamples the logits).
        interpolation: resize mode of the GAUs (one of :data:`PAN_INTERPOLATIONS`; smp's ``decoder_interpolation``).
        smp_style: smp's FPA and GAU blocks (see :class:`FeaturePyramidAttention`; with ``pyramid_size=0``, smp's
            exact FPA).

    Shapes: features -> the output of the FPA and of each GAU, shallow to deep:
    [(B, channels, H / s, W / s) for the used strides s].
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: int = 64, pyramid_size: int = 4,
                 min_stride: int = 4, interpolation: str = "bilinear", smp_style: bool = False) -> None:
        super().__init__(in_channels, in_strides)
        check_positive_int(min_stride, "min_stride", "PANDecoder")
        if interpolation not in PAN_INTERPOLATIONS:
            raise ValueError(f"PANDecoder: interpolation must be one of {PAN_INTERPOLATIONS}, got {interpolation!r}")
        last = len(self.in_channels) - 1
        self.first = next((i for i, s in enumerate(self.in_strides) if s >= min_stride), last)
        self.fpa = FeaturePyramidAttention(self.in_channels[-1], channels, pyramid_size, smp_style)
        # deep to shallow, in the order forward runs them
        self.gaus = nn.ModuleList(GlobalAttentionUpsample(self.in_channels[i], channels, interpolation, smp_style)
                                  for i in reversed(range(self.first, last)))
        self._channels = channels

    @property
    def out_channels(self) -> list[int]:
        return [self._channels] * (len(self.in_channels) - self.first)

    @property
    def min_input_size(self) -> int:
        """The smallest input side the decoder takes: 8 times the deepest stride with smp's pyramid
        (``pyramid_size=0``), else 1."""
        return 1 if self.fpa.pyramid_size else 8 * self.in_strides[-1]

    @property
    def out_strides(self) -> list[int]:
        return self.in_strides[self.first:]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """FPA on the deepest feature, then each skip, deep to shallow."""
        x = self.fpa(features[-1])
        outputs = [x]
        for k, gau in enumerate(self.gaus):
            x = gau(x, features[len(features) - 2 - k])
            outputs.append(x)
        return outputs[::-1]
