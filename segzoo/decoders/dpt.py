"""DPT decoder (Ranftl et al. 2021): ViT token maps reassembled into a pyramid, fused coarse to fine."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.blocks import ConvBnAct
from segzoo.decoders.base import DecoderSpec, register_decoder


class ResidualConvUnit(nn.Module):
    """``x + BN(conv(ReLU(BN(conv(ReLU(x))))))`` with 3x3 convolutions. Shapes: (B, C, H, W) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual refinement of ``x``."""
        return x + self.body(x)


class Reassemble(nn.Module):
    """One token map to one pyramid level: 1x1 conv, resample by ``factor``, 3x3 conv to the fusion width.

    ``factor`` > 1: transposed conv (kernel = stride = factor); 1: nothing; 1/k (given as -k): 3x3 conv of
    stride k. Shapes: (B, in_channels, h, w) -> (B, out_channels, h * factor, w * factor).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, mid_channels, 1)
        if factor > 1:
            self.resample: nn.Module = nn.ConvTranspose2d(mid_channels, mid_channels, factor, stride=factor)
        elif factor < -1:
            self.resample = nn.Conv2d(mid_channels, mid_channels, 3, stride=-factor, padding=1)
        else:
            self.resample = nn.Identity()
        self.out = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project, resample, widen."""
        return self.out(self.resample(self.project(x)))


@register_decoder("dpt")
class DPTDecoder(DecoderSpec):
    """DPT's convolutional decoder over the token maps of a plain ViT (all at one stride p).

    1. Reassemble: token map i -> stride p/4 * 2**i (p/4, p/2, p, 2p for four maps: 4, 8, 16, 32 for
       p = 16) by a 1x1 conv to ``channels[i]``, a transposed conv / nothing / a strided 3x3 conv, and a
       3x3 conv to ``fusion_channels``.
    2. Fusion, coarse to fine: a residual conv unit on the level, plus the coarser fused result, a
       second residual unit, a 1x1 projection, then a bilinear resize to the next finer level's size
       (the projection runs before the resize: a 1x1 conv commutes with it, at a quarter of the cost).
    3. The finest fused map (stride p/4) goes through a 3x3 conv + BN + ReLU; the head upsamples the
       logits from there. smp's DPT resizes to stride p/8 first and runs its 3x3 head conv there (4x the
       pixels); the FLOP counts of the two are in BENCHMARKS.md.

    Resizes go to the next level's exact size, so token grids of any size (odd ones too) fit.

    Args:
        in_channels: token map channels (the ViT's embed dim, one per map).
        in_strides: token map strides (all equal to the patch size, a multiple of 4).
        channels: width of each reassembled level after its 1x1 conv (one per token map).
        fusion_channels: width of every fused level and of the output.
        align_corners: the fusion's bilinear resizes align corner pixels (smp's DPT; default ``False``).
        upsample_last: smp's DPT: every level, the finest too, is resized (x2) before its 1x1 projection, and the
            3x3 conv runs at stride p/8; default ``False`` (projection first, the finest level kept at p/4).

    Shapes: n x (B, D, H / p, W / p) -> [(B, fusion_channels, H / s, W / s)], s = p/4 (p/8 with ``upsample_last``).
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: Sequence[int] = (96, 192, 384, 768),
                 fusion_channels: int = 256, align_corners: bool = False, upsample_last: bool = False) -> None:
        super().__init__(in_channels, in_strides)
        if len(set(self.in_strides)) != 1:
            raise ValueError(f"DPTDecoder needs token maps at one stride (a plain ViT), got strides {self.in_strides}")
        patch = self.in_strides[0]
        n = len(self.in_channels)
        if patch % 4:
            raise ValueError(f"DPTDecoder reassembles the token maps at strides p/4..2p: the patch size p must be a "
                             f"multiple of 4, got p={patch} (use a ViT with patch 8, 16 or 32)")
        if n > 4:
            raise ValueError(f"DPTDecoder takes at most 4 token maps (strides p/4..2p), got {n}")
        channels = [int(c) for c in channels]
        if len(channels) < n or any(c <= 0 for c in channels[:n]):
            raise ValueError(f"DPTDecoder: channels needs {n} positive widths (one per token map), got {channels}")
        if not isinstance(fusion_channels, int) or fusion_channels <= 0:
            raise ValueError(f"DPTDecoder: fusion_channels must be a positive int, got {fusion_channels!r}")
        factors = [4, 2, 1, -2][:n]  # token map i goes to stride p / 4 * 2**i
        self.reassemble = nn.ModuleList(
            Reassemble(c_in, mid, fusion_channels, f) for c_in, mid, f in zip(self.in_channels, channels, factors))
        self.units1 = nn.ModuleList(ResidualConvUnit(fusion_channels) for _ in range(n))
        self.units2 = nn.ModuleList(ResidualConvUnit(fusion_channels) for _ in range(n))
        self.projects = nn.ModuleList(nn.Conv2d(fusion_channels, fusion_channels, 1) for _ in range(n - 1))
        if upsample_last and patch % 8:
            raise ValueError(f"DPTDecoder: upsample_last needs a patch size p that is a multiple of 8 (the output "
                             f"is at stride p/8), got p={patch}")
        # an Identity without upsample_last: segzoo's own models keep their keys, TorchScript sees the attribute
        self.last_project = nn.Conv2d(fusion_channels, fusion_channels, 1) if upsample_last else nn.Identity()
        self.upsample_last = bool(upsample_last)
        self.align_corners = bool(align_corners)
        self.out = ConvBnAct(fusion_channels, fusion_channels, 3)
        self._out = fusion_channels

    @property
    def out_channels(self) -> list[int]:
        return [self._out]

    @property
    def out_strides(self) -> list[int]:
        return [self.in_strides[0] // (8 if self.upsample_last else 4)]

    @property
    def deepest_stride(self) -> int:
        """The coarsest stride it reassembles to (p/4 * 2**(n-1): 2p for four maps): models pad inputs to it,
        so that level is an exact half of the token grid and never one value per channel."""
        return self.in_strides[0] // 4 * 2 ** (len(self.in_strides) - 1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Reassemble the token maps, fuse from the coarsest level to the finest."""
        levels = [block(f) for block, f in zip(self.reassemble, features)]
        fused = None
        for k in range(len(levels) - 1, -1, -1):
            x = self.units1[k](levels[k])
            if fused is not None:
                x = x + fused
            x = self.units2[k](x)
            if k > 0 and self.upsample_last:  # smp's order: resize, then project
                fused = self.projects[k - 1](F.interpolate(x, size=levels[k - 1].shape[-2:], mode="bilinear",
                                                           align_corners=self.align_corners))
            elif k > 0:
                fused = F.interpolate(self.projects[k - 1](x), size=levels[k - 1].shape[-2:], mode="bilinear",
                                      align_corners=self.align_corners)
            else:
                fused = x
        if self.upsample_last:
            fused = self.last_project(F.interpolate(fused, scale_factor=2.0, mode="bilinear",
                                                    align_corners=self.align_corners))
        return [self.out(fused)]
