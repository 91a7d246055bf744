"""UNetDecoder: top-down path with concat (Unet) or sum (Linknet) skip blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.blocks import (
    INTERPOLATION_MODES,
    ConvBnAct,
    get_block,
    make_activation,
    make_norm,
    make_upsample,
    resolve_upsample_mode,
)
from segzoo.decoders.base import DecoderSpec, register_decoder, stride_ratio
from segzoo.errors import unknown_name_error


def default_width(stride: int) -> int:
    """Decoder width for a stride: 16 * stride, capped at 256 (16, 32, 64, 128, 256, 256...)."""
    return min(256, 16 * stride)


class DecoderConcatBlock(nn.Module):
    """Upsample the deeper feature, concatenate the skip, then a conv block.

    Shapes: (B, C_deep, h, w), (B, C_skip, h*s, w*s) -> (B, out_channels, h*s, w*s).
    """

    def __init__(self, deep_channels: int, skip_channels: int, out_channels: int, scale: int,
                 upsample: str = "bilinear", complexity: int = 1, dropout: float = 0.0,
                 activation: str = "relu", norm: str = "bn") -> None:
        super().__init__()
        learned = resolve_upsample_mode(upsample) not in INTERPOLATION_MODES
        up_channels = out_channels if learned else deep_channels
        self.up = make_upsample(upsample, deep_channels, scale, out_channels=up_channels)
        self.block = get_block(up_channels + skip_channels, out_channels, complexity=complexity,
                               activation=activation, norm=norm)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()

        # when gradients are computed, conv(cat(up, skip)) is computed as conv(up, W_up) + conv(skip,
        # W_skip): same weights and state dict, equal within float rounding; set by UNetDecoder for the
        # finest block, where it was measured faster. Without gradients (inference) the concat path
        # runs: its conv is called as a module, which Conv+BN folding (segzoo.inference) relies on;
        # traced, exported and compiled graphs always use the concat (one graph whatever grad mode).
        self.split_concat = False

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse ``x`` (deeper) into ``skip`` (shallower)."""
        up = self.up(x)
        first = self.block[0]
        if not self.split_concat or not torch.is_grad_enabled() or not isinstance(first, ConvBnAct) \
                or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.dropout(self.block(torch.cat([up, skip], dim=1)))
        conv, norm, act = first
        w, c = conv.weight, up.shape[1]
        y = F.conv2d(up, w[:, :c], conv.bias, conv.stride, conv.padding, conv.dilation)
        # in place: a convolution's backward does not need its output
        y = y.add_(F.conv2d(skip, w[:, c:], None, conv.stride, conv.padding, conv.dilation))
        y = act(norm(y))
        for layer in list(self.block)[1:]:
            y = layer(y)
        return self.dropout(y)


class DecoderSumBlock(nn.Module):
    """Linknet block: 1x1 reduce, upsample, 3x3 conv(s), 1x1 expand to the skip's channels, add the skip.

    The reduction to ``deep_channels // 4`` happens before upsampling, so the spatial
    convs run on few channels (transposed convs are optional, not the default: they
    are slow on CPU).

    ``transposed_up``: upsample x2 with a 4x4 stride-2 transposed conv + norm + activation and no 3x3 conv
    (smp's Linknet block). ``out_channels``: the width without a skip (:meth:`decode`; default ``skip_channels``).

    Shapes: (B, C_deep, h, w), (B, C_skip, h*s, w*s) -> (B, C_skip, h*s, w*s).
    """

    def __init__(self, deep_channels: int, skip_channels: int, scale: int, upsample: str = "bilinear",
                 complexity: int = 1, dropout: float = 0.0, activation: str = "relu", norm: str = "bn",
                 transposed_up: bool = False, out_channels: int | None = None) -> None:
        super().__init__()
        mid = max(deep_channels // 4, 8)
        self.reduce = ConvBnAct(deep_channels, mid, 1, activation=activation, norm=norm)
        if transposed_up:
            if scale != 2:
                raise ValueError(f"DecoderSumBlock: transposed_up upsamples x2, the features need x{scale}")
            self.up = nn.Sequential(nn.ConvTranspose2d(mid, mid, 4, stride=2, padding=1), make_norm(norm, mid),
                                    make_activation(activation))
            self.conv: nn.Module = nn.Identity()
        else:
            self.up = make_upsample(upsample, mid, scale)
            self.conv = get_block(mid, mid, complexity=max(complexity - 1, 0), activation=activation, norm=norm)
        out = skip_channels if out_channels is None else out_channels
        self.expand = ConvBnAct(mid, out, 1, activation=activation, norm=norm)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its skip: (B, C_deep, h, w) -> (B, out_channels, h*s, w*s)."""
        return self.expand(self.conv(self.up(self.reduce(x))))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Add the decoded ``x`` to ``skip``."""
        return self.dropout(self.decode(x) + skip)


@register_decoder("unet")
class UNetDecoder(DecoderSpec):
    """Top-down decoder: from the deepest feature, fuse each shallower skip in turn.

    Args:
        in_channels: feature channels, shallow to deep.
        in_strides: feature strides.
        channels: output width per skip level, shallow to deep (concat blocks only; default
            ``min(256, 16 * stride)``: 32 at stride 2, 64 at 4, 128 at 8, 256 deeper). Sum blocks
            output the skip's own channels.
        block: ``"concat"`` (Unet) or ``"sum"`` (Linknet).
        complexity: extra convs per block.
        upsample: ``"bilinear"``, ``"nearest"`` (alias ``"interpolate"``), ``"transpose"``
            (alias ``"conv"``) or ``"pixelshuffle"``.
        dropout: Dropout2d rate after each block.
        min_stride: skips finer than this stride are not used (e.g. 4 stops the decoder at stride 4).
        activation: activation name.
        norm: normalization name.
        transposed_up: sum blocks only: smp's Linknet block (see :class:`DecoderSumBlock`).
        final_channels: sum blocks only: one more block after the finest skip, without a skip, at twice its
            resolution, with this width (smp's Linknet: 32); its map is then the first output.

    Shapes: features -> one map per used skip level, shallow to deep:
    [(B, out_channels[j], H / out_strides[j], W / out_strides[j])].
    """

    min_features = 2

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: Sequence[int] | None = None,
                 block: str = "concat", complexity: int = 1, upsample: str = "bilinear", dropout: float = 0.0,
                 min_stride: int = 1, activation: str = "relu", norm: str = "bn", transposed_up: bool = False,
                 final_channels: int | None = None) -> None:
        super().__init__(in_channels, in_strides)
        if block not in ("concat", "sum"):
            raise unknown_name_error("decoder block", str(block), ("concat", "sum"))
        if block != "sum" and (transposed_up or final_channels is not None):
            raise ValueError("UNetDecoder: transposed_up and final_channels are options of block='sum'")
        self.first = next((i for i, s in enumerate(self.in_strides) if s >= min_stride), len(self.in_strides))
        skips = list(range(self.first, len(self.in_channels) - 1))
        if not skips:
            raise ValueError(f"UNetDecoder: min_stride={min_stride} leaves no skip feature among strides {in_strides}")
        if block == "sum":
            widths = [self.in_channels[i] for i in skips]
        elif channels is None:
            widths = [default_width(self.in_strides[i]) for i in skips]
        else:
            widths = [int(c) for c in channels]
            if len(widths) != len(skips):
                raise ValueError(f"UNetDecoder: channels {list(channels)} must give one width per skip level "
                                 f"({len(skips)}: strides {[self.in_strides[i] for i in skips]})")
        self.blocks = nn.ModuleList()
        deep = self.in_channels[-1]
        # built deep to shallow, in the order forward runs them
        for j in reversed(range(len(skips))):
            i = skips[j]
            scale = stride_ratio(self.in_strides[i + 1], self.in_strides[i], "UNetDecoder")
            if block == "concat":
                blk = DecoderConcatBlock(deep, self.in_channels[i], widths[j], scale, upsample, complexity,
                                         dropout, activation, norm)
            else:
                blk = DecoderSumBlock(deep, self.in_channels[i], scale, upsample, complexity, dropout,
                                      activation, norm, transposed_up)
            self.blocks.append(blk)
            deep = widths[j]
        # the block without a skip (0 or 1 of them): a list, so that TorchScript needs no optional attribute
        self.final = nn.ModuleList()
        strides = self.in_strides[self.first:-1]
        if final_channels is not None:
            if strides[0] % 2:
                raise ValueError(f"UNetDecoder: final_channels needs the finest skip at an even stride, got "
                                 f"{strides[0]}")
            self.final.append(DecoderSumBlock(deep, self.in_channels[skips[0]], 2, upsample, complexity, dropout,
                                              activation, norm, transposed_up, out_channels=int(final_channels)))
            widths, strides = [int(final_channels), *widths], [strides[0] // 2, *strides]
        if block == "concat":
            # the finest block reads the largest maps: skipping the concatenated copy (and its
            # gradient's slices) made its fused conv's forward + backward 18-30 % faster on CPU,
            # AVX-512 and AVX2, channels_last and NCHW (resnet34 widths, 4 x 256^2); deeper blocks
            # were 2-4 % slower split, so they keep the concat. Train step of the resnet34 Unet:
            # -1.4 % (default), -4 % (both channels_last), -1 to -2.5 % (AVX2 kernels)
            self.blocks[-1].split_concat = True
        self.declare_outputs(widths, strides)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decode; returns the output of every block, shallow to deep."""
        x = features[-1]
        outputs = []
        for k, blk in enumerate(self.blocks):
            x = blk(x, features[len(features) - 2 - k])
            outputs.append(x)
        for blk in self.final:
            x = blk.dropout(blk.decode(x))
            outputs.append(x)
        return outputs[::-1]
