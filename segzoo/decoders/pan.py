"""PAN decoder: feature pyramid attention on the deepest feature, global attention upsampling at each skip."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.blocks import ConvBnAct
from segzoo.decoders.base import DecoderSpec, check_positive_int, register_decoder
from segzoo.decoders.psp import adaptive_avg_pool


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` (B, C, h, w) to ``like``'s spatial size (any sizes, traced and exported too)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class _MapConv(nn.Sequential):
    """k x k conv with bias + ReLU on a small attention map (no norm: the pooled maps may be 1x1)."""

    def __init__(self, in_channels: int, kernel_size: int) -> None:
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
        pyramid_size: size of the pyramid's first level (a multiple of 4).

    Shapes: (B, in_channels, h, w) -> (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, pyramid_size: int = 4) -> None:
        super().__init__()
        if not isinstance(pyramid_size, int) or isinstance(pyramid_size, bool) or pyramid_size < 4 \
                or pyramid_size % 4:
            raise ValueError(f"FeaturePyramidAttention: pyramid_size must be a positive multiple of 4, "
                             f"got {pyramid_size!r}")
        self.pyramid_size = pyramid_size
        self.mid = ConvBnAct(in_channels, out_channels, 1)
        self.glob = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.down1 = _MapConv(in_channels, 7)
        self.down2 = _MapConv(1, 5)
        self.down3 = nn.Sequential(_MapConv(1, 3), _MapConv(1, 3))
        self.lateral2 = _MapConv(1, 5)
        self.lateral1 = _MapConv(1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pyramid-weighted projection of ``x`` plus its global context."""
        d1 = self.down1(adaptive_avg_pool(x, self.pyramid_size))
        d2 = self.down2(F.max_pool2d(d1, 2))
        d3 = self.down3(F.max_pool2d(d2, 2))
        a = self.lateral2(d2) + resize_to(d3, d2)
        a = self.lateral1(d1) + resize_to(a, d1)
        return self.mid(x) * resize_to(a, x) + self.glob(x.mean(dim=(2, 3), keepdim=True))


class GlobalAttentionUpsample(nn.Module):
    """Global attention upsample (GAU): the skip through a 3x3 Conv-BN-ReLU, weighted per channel by the
    deeper feature's global context (mean, 1x1 conv, sigmoid), plus the upsampled deeper feature.

    Shapes: (B, channels, h, w), (B, skip_channels, h*s, w*s) -> (B, channels, h*s, w*s).
    """

    def __init__(self, skip_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = ConvBnAct(skip_channels, channels, 3)
        self.gate = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse ``x`` (deeper) into ``skip``."""
        return resize_to(x, skip) + self.conv(skip) * self.gate(x.mean(dim=(2, 3), keepdim=True))


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

    Shapes: features -> the output of the FPA and of each GAU, shallow to deep:
    [(B, channels, H / s, W / s) for the used strides s].
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: int = 64, pyramid_size: int = 4,
                 min_stride: int = 4) -> None:
        super().__init__(in_channels, in_strides)
        check_positive_int(min_stride, "min_stride", "PANDecoder")
        last = len(self.in_channels) - 1
        self.first = next((i for i, s in enumerate(self.in_strides) if s >= min_stride), last)
        self.fpa = FeaturePyramidAttention(self.in_channels[-1], channels, pyramid_size)
        # deep to shallow, in the order forward runs them
        self.gaus = nn.ModuleList(GlobalAttentionUpsample(self.in_channels[i], channels)
                                  for i in reversed(range(self.first, last)))
        self._channels = channels

    @property
    def out_channels(self) -> list[int]:
        return [self._channels] * (len(self.in_channels) - self.first)

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
