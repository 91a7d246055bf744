"""MA-Net decoder: position attention on the deepest feature, multi-scale fusion attention at each skip."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from segzoo.blocks import ConvBnAct, get_block, make_activation, make_upsample
from segzoo.decoders.base import DecoderSpec, check_positive_int, register_decoder, stride_ratio


class PositionAttention(nn.Module):
    """Position attention block (PAB): every position attends to every other one, a residual added, 3x3 conv.

    ``x + v(x) @ softmax(q(x)^T k(x))`` over the h*w positions (softmax over the keys), then a 3x3 Conv-BN-ReLU.
    The attention map is (h*w)^2 per image: run it on the deepest (stride 32) feature.

    Args:
        channels: C of input and output.
        key_channels: C of the queries and keys.

    Shapes: (B, channels, h, w) -> (B, channels, h, w).
    """

    def __init__(self, channels: int, key_channels: int = 64) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.scale = float(key_channels) ** -0.5
        self.out = ConvBnAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the positions of ``x``."""
        q = self.query(x).flatten(2)  # (B, K, N)
        k = self.key(x).flatten(2)
        v = self.value(x).flatten(2)  # (B, C, N)
        weights = torch.softmax(q.transpose(1, 2) @ k * self.scale, dim=-1)  # (B, N queries, N keys)
        attended = (v @ weights.transpose(1, 2)).reshape(x.shape)
        return self.out(x + attended)


class GlobalPositionAttention(nn.Module):
    """Position attention in smp 0.6's form (its MAnet's PAB): one softmax over every (query, key) pair.

    ``weights = softmax over all N x N pairs of q(x)^T k(x)`` (no scaling), ``a = weights @ v(x)^T`` (N, C),
    read back as a (C, h, w) map by a plain reshape of that (N, C) matrix (smp's, whose outputs this
    reproduces), then ``out(x + a)``. ``v`` and ``out`` are 3x3 convs with bias (no norm, no activation);
    ``q`` and ``k`` 1x1.

    Args:
        channels: C of input and output.
        key_channels: C of the queries and keys.

    Shapes: (B, channels, h, w) -> (B, channels, h, w).
    """

    def __init__(self, channels: int, key_channels: int = 64) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the positions of ``x``."""
        b, c, h, w = x.shape
        scores = self.query(x).flatten(2).transpose(1, 2) @ self.key(x).flatten(2)  # (B, N, N)
        weights = torch.softmax(scores.reshape(b, -1), dim=1).reshape(b, h * w, h * w)
        attended = (weights @ self.value(x).flatten(2).transpose(1, 2)).reshape(b, c, h, w)
        return self.out(x + attended)


class ChannelGate(nn.Sequential):
    """Squeeze-and-excitation gate: global mean, 1x1 reduce, ReLU, 1x1 expand, sigmoid (no norm: one value
    per channel and image).

    Shapes: (B, in_channels, h, w) -> (B, out_channels, 1, 1) in (0, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 16) -> None:
        hidden = max(1, in_channels // reduction)
        super().__init__(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, out_channels, 1),
                         nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel weights of ``x``."""
        return super().forward(x.mean(dim=(2, 3), keepdim=True))


class FusionAttention(nn.Module):
    """Multi-scale fusion attention block (MFAB): the deeper feature, gated by channel attention computed from
    it and from the skip, fused with the skip.

    1. the deeper feature through a 3x3 Conv-BN-ReLU to ``out_channels``, at its own (coarse) resolution;
    2. gated by ``gate(deep) + gate(skip)`` (two squeeze-and-excitation gates, as MA-Net's);
    3. ``conv1x1(cat(up(gated), skip))`` computed as ``up(bn(conv1x1(gated))) + bn(conv1x1(skip))`` (a 1x1 conv
       and a norm commute with interpolation, so the deeper part runs at the coarse resolution; a norm per part
       folds into its conv for inference), ReLU;
    4. ``1 + complexity`` 3x3 Conv-BN-ReLU of ``out_channels``.

    Shapes: (B, deep_channels, h, w), (B, skip_channels, h*s, w*s) -> (B, out_channels, h*s, w*s).
    """

    def __init__(self, deep_channels: int, skip_channels: int, out_channels: int, scale: int,
                 upsample: str = "bilinear", reduction: int = 16, complexity: int = 0, activation: str = "relu",
                 norm: str = "bn") -> None:
        super().__init__()
        self.high = ConvBnAct(deep_channels, out_channels, 3, activation=activation, norm=norm)
        self.gate_high = ChannelGate(out_channels, out_channels, reduction)
        self.gate_low = ChannelGate(skip_channels, out_channels, reduction)
        self.fuse_high = ConvBnAct(out_channels, out_channels, 1, activation=None, norm=norm)
        self.fuse_low = ConvBnAct(skip_channels, out_channels, 1, activation=None, norm=norm)
        self.up = make_upsample(upsample, out_channels, scale)
        self.act = make_activation(activation)
        self.block = get_block(out_channels, out_channels, complexity=complexity, activation=activation, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse ``x`` (deeper) into ``skip``."""
        high = self.high(x)
        gated = high * (self.gate_high(high) + self.gate_low(skip))
        y = self.up(self.fuse_high(gated)) + self.fuse_low(skip)
        return self.block(self.act(y))


class ConcatFusionAttention(nn.Module):
    """MFAB in its original form (smp 0.6's MAnet): the gated, upsampled deeper feature concatenated with
    the skip, then 3x3 convs at the skip's resolution.

    1. the deeper feature through a 3x3 Conv-Norm-Act (its own width) and a 1x1 one to ``skip_channels``;
    2. upsampled, then gated by ``gate(it) + gate(skip)`` (two squeeze-and-excitation gates);
    3. ``cat(gated, skip)`` through ``1 + complexity`` 3x3 Conv-Norm-Act layers of ``out_channels``.

    Args: as :class:`FusionAttention`.

    Shapes: (B, deep_channels, h, w), (B, skip_channels, h*s, w*s) -> (B, out_channels, h*s, w*s).
    """

    def __init__(self, deep_channels: int, skip_channels: int, out_channels: int, scale: int,
                 upsample: str = "bilinear", reduction: int = 16, complexity: int = 0, activation: str = "relu",
                 norm: str = "bn") -> None:
        super().__init__()
        self.high = nn.Sequential(ConvBnAct(deep_channels, deep_channels, 3, activation=activation, norm=norm),
                                  ConvBnAct(deep_channels, skip_channels, 1, activation=activation, norm=norm))
        self.up = make_upsample(upsample, skip_channels, scale)
        self.gate_high = ChannelGate(skip_channels, skip_channels, reduction)
        self.gate_low = ChannelGate(skip_channels, skip_channels, reduction)
        self.block = get_block(2 * skip_channels, out_channels, complexity=complexity, activation=activation,
                               norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse ``x`` (deeper) into ``skip``."""
        high = self.up(self.high(x))
        gated = high * (self.gate_high(high) + self.gate_low(skip))
        return self.block(torch.cat([gated, skip], dim=1))


FUSIONS = {"split": FusionAttention, "concat": ConcatFusionAttention}
ATTENTIONS = {"keys": PositionAttention, "global": GlobalPositionAttention}


@register_decoder("manet")
class MAnetDecoder(DecoderSpec):
    """MA-Net (Fan et al. 2020): a position attention block on the deepest feature, then from deep to shallow a
    multi-scale fusion attention block per skip level.

    The deepest feature is first reduced by a 1x1 Conv-BN-ReLU to ``attention_channels``, so the attention's
    3x3 conv runs on fewer channels; the skip blocks (:class:`FusionAttention`) run their first 3x3 at the deeper
    level's resolution and one 3x3 at the skip's; the decoder stops at ``min_stride`` (4; the MAnet models' head then
    has two learned x2 steps to full resolution: ``head_defaults`` of the architecture table). About 1.4x fewer
    FLOPs than smp's MAnet for a ResNet34, head included (see BENCHMARKS.md).

    Args:
        in_channels: feature channels, shallow to deep.
        in_strides: feature strides.
        channels: output width per used skip level, shallow to deep (default :func:`manet_width`: 64 at
            stride 4, 96 at 8, 128 deeper).
        attention_channels: width of the position attention block.
        key_channels: query/key width of the position attention.
        reduction: squeeze-and-excitation reduction of the gates.
        complexity: extra 3x3 layers per skip block.
        upsample: upsampling mode (see :func:`segzoo.blocks.make_upsample`).
        min_stride: skips finer than this stride are not used.
        activation: activation name.
        norm: normalization name.
        fusion: the skip blocks: ``"split"`` (default, :class:`FusionAttention`) or ``"concat"``
            (:class:`ConcatFusionAttention`, smp's MFAB).
        attention: ``"keys"`` (default, :class:`PositionAttention`: softmax over the keys of each query) or
            ``"global"`` (:class:`GlobalPositionAttention`, smp's PAB).
        reduce: the 1x1 reduction to ``attention_channels`` before the attention (default); ``False``: the
            attention runs on the deepest feature's own channels (smp's).

    Shapes: features -> the output of the position attention and of each skip block, shallow to deep:
    [(B, out_channels[j], H / out_strides[j], W / out_strides[j])].
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: Sequence[int] | None = None,
                 attention_channels: int = 256, key_channels: int = 64, reduction: int = 16, complexity: int = 0,
                 upsample: str = "bilinear", min_stride: int = 4, activation: str = "relu", norm: str = "bn",
                 fusion: str = "split", attention: str = "keys", reduce: bool = True) -> None:
        super().__init__(in_channels, in_strides)
        if fusion not in FUSIONS or attention not in ATTENTIONS:
            raise ValueError(f"MAnetDecoder: fusion must be one of {list(FUSIONS)} and attention one of "
                             f"{list(ATTENTIONS)}, got {fusion!r} and {attention!r}")
        for name, value in [("key_channels", key_channels), ("reduction", reduction), ("min_stride", min_stride)]:
            check_positive_int(value, name, "MAnetDecoder")
        last = len(self.in_channels) - 1
        self.first = next((i for i, s in enumerate(self.in_strides) if s >= min_stride), last)
        skips = list(range(self.first, last))
        if channels is None:
            widths = [manet_width(self.in_strides[i]) for i in skips]
        else:
            widths = [int(c) for c in channels]
            if len(widths) != len(skips):
                raise ValueError(f"MAnetDecoder: channels {list(channels)} must give one width per skip level "
                                 f"({len(skips)}: strides {[self.in_strides[i] for i in skips]})")
        if reduce:
            self.reduce = ConvBnAct(self.in_channels[-1], attention_channels, 1, activation=activation, norm=norm)
        else:
            self.reduce, attention_channels = nn.Identity(), self.in_channels[-1]
        self.attention = ATTENTIONS[attention](attention_channels, key_channels)
        self.blocks = nn.ModuleList()
        deep = attention_channels
        for j in reversed(range(len(skips))):  # deep to shallow, in the order forward runs them
            i = skips[j]
            scale = stride_ratio(self.in_strides[i + 1], self.in_strides[i], "MAnetDecoder")
            self.blocks.append(FUSIONS[fusion](deep, self.in_channels[i], widths[j], scale, upsample, reduction,
                                               complexity, activation, norm))
            deep = widths[j]
        self._widths = [*widths, attention_channels]

    @property
    def out_channels(self) -> list[int]:
        return list(self._widths)

    @property
    def out_strides(self) -> list[int]:
        return self.in_strides[self.first:]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Attend on the deepest feature, then fuse each skip, deep to shallow."""
        x = self.attention(self.reduce(features[-1]))
        outputs = [x]
        for k, blk in enumerate(self.blocks):
            x = blk(x, features[len(features) - 2 - k])
            outputs.append(x)
        return outputs[::-1]


def manet_width(stride: int) -> int:
    """MAnetDecoder's default width at a stride: 64 at stride 4 or finer, 96 at 8, 128 deeper."""
    return 64 if stride <= 4 else 96 if stride <= 8 else 128
