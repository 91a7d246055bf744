"""UNet++ decoder: nested, densely connected skip pathways (Zhou et al. 2018), built narrow for speed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from segzoo.blocks import (
    INTERPOLATION_MODES,
    ConvBnAct,
    get_block,
    make_activation,
    make_upsample,
    resolve_upsample_mode,
)
from segzoo.decoders.base import DecoderSpec, check_positive_int, register_decoder, stride_ratio
from segzoo.decoders.unet import default_width


class NestedNode(nn.Module):
    """One node X(i, j) of the nested decoder: fuse the level's earlier nodes with the upsampled deeper node.

    ``X(i, j) = block(act(norm(conv1x1(cat(X(i, 0), ..., X(i, j-1)))) + up(norm(conv1x1(X(i+1, j-1))))))``,
    ``block`` being ``1 + complexity`` 3x3 Conv-Norm-Act layers. That is a 1x1 convolution over the
    concatenation of UNet++'s node inputs, split in two parts: a 1x1 conv (and a norm) commutes with
    interpolation, so the deeper node's part runs at its own, 4x smaller, resolution before the upsampling; each
    part has its own norm, so both fold into their conv for inference. Then the 3x3 conv(s) on the node's width.

    Args:
        same_channels: total channels of the same-level inputs ``X(i, 0..j-1)``.
        deep_channels: channels of the deeper node ``X(i+1, j-1)``.
        out_channels: width of the node.
        scale: stride ratio between the deeper level and this one.
        upsample: mode of :func:`segzoo.blocks.make_upsample`.
        complexity: extra 3x3 layers after the first.
        activation: activation name.
        norm: normalization name.

    Shapes: [(B, c_k, h, w)...], (B, deep_channels, h / scale, w / scale) -> (B, out_channels, h, w).
    """

    def __init__(self, same_channels: int, deep_channels: int, out_channels: int, scale: int,
                 upsample: str = "bilinear", complexity: int = 0, activation: str = "relu", norm: str = "bn") -> None:
        super().__init__()
        self.same = ConvBnAct(same_channels, out_channels, 1, activation=None, norm=norm)
        self.deep = ConvBnAct(deep_channels, out_channels, 1, activation=None, norm=norm)
        self.up = make_upsample(upsample, out_channels, scale)
        self.act = make_activation(activation)
        self.block = get_block(out_channels, out_channels, complexity=complexity, activation=activation, norm=norm)

    def forward(self, same: list[torch.Tensor], deep: torch.Tensor) -> torch.Tensor:
        """Fuse ``same`` (this level's earlier nodes) with ``deep`` (the deeper node)."""
        x = same[0] if len(same) == 1 else torch.cat(same, dim=1)
        return self.block(self.act(self.same(x) + self.up(self.deep(deep))))


class ConcatNode(nn.Module):
    """A node X(i, j) in UNet++'s original form (smp's): upsample the deeper node, concatenate, 3x3 conv(s).

    ``X(i, j) = block(cat(up(X(i+1, j-1)), X(i, j-1), ..., X(i, 0)))`` (the deeper node first, then this
    level's nodes latest first, smp's channel order), ``block`` being ``1 + complexity`` 3x3 Conv-Norm-Act
    layers over the whole concatenation at this level's resolution.

    Args: as :class:`NestedNode` (a learned ``upsample`` maps the deeper node to ``out_channels``).

    Shapes: [(B, c_k, h, w)...], (B, deep_channels, h / scale, w / scale) -> (B, out_channels, h, w).
    """

    def __init__(self, same_channels: int, deep_channels: int, out_channels: int, scale: int,
                 upsample: str = "bilinear", complexity: int = 0, activation: str = "relu", norm: str = "bn") -> None:
        super().__init__()
        up_channels = deep_channels if resolve_upsample_mode(upsample) in INTERPOLATION_MODES else out_channels
        self.up = make_upsample(upsample, deep_channels, scale, out_channels=up_channels)
        self.block = get_block(up_channels + same_channels, out_channels, complexity=complexity,
                               activation=activation, norm=norm)

    def forward(self, same: list[torch.Tensor], deep: torch.Tensor) -> torch.Tensor:
        """Fuse ``same`` (this level's earlier nodes, X(i, 0) first) with ``deep`` (the deeper node)."""
        return self.block(torch.cat([self.up(deep), *same[::-1]], dim=1))


NODES = {"split": NestedNode, "concat": ConcatNode}
INNER_WIDTHS = ("level", "feature")


@register_decoder("unetplusplus")
class UnetPlusPlusDecoder(DecoderSpec):
    """UNet++: every skip level holds a row of nodes, each fed by all earlier nodes of its row and the
    upsampled node below-left (dense skip pathways); the last node of each row is that level's output.

    For skip levels ``i`` (shallow ``0`` to deep ``L-1``; level ``L`` is the deepest feature) node ``X(i, j)``,
    ``1 <= j <= L - i``, reads ``X(i, 0..j-1)`` and ``X(i+1, j-1)`` (``X(i, 0)`` is the encoder feature). The
    nodes are :class:`NestedNode` s: a split 1x1 fusion then ``1 + complexity`` 3x3 convs of the level's width
    (the UnetPlusPlus models pass ``complexity=1``: the architecture table's default), where smp's UNet++ runs two
    3x3 convs over the whole concatenation (and a full-resolution stage): about 2.2x fewer FLOPs for a ResNet34
    with two convs per node, 2.7x with one (see BENCHMARKS.md).

    Args:
        in_channels: feature channels, shallow to deep.
        in_strides: feature strides.
        channels: width of every node of a skip level, one per used skip level, shallow to deep (default
            ``min(256, 16 * stride)``: 32 at stride 2, 64 at 4, 128 at 8, 256 deeper).
        complexity: extra 3x3 layers per node.
        upsample: mode of the upsampling of the deeper node (see :func:`segzoo.blocks.make_upsample`).
        min_stride: skips finer than this stride are not used.
        activation: activation name.
        norm: normalization name.
        node: ``"split"`` (default, :class:`NestedNode`) or ``"concat"`` (:class:`ConcatNode`, UNet++'s
            original node, as smp's: with ``complexity=1`` and ``inner_width="feature"``, smp's decoder).
        inner_width: width of the nodes of a level but its last: ``"level"`` (default, the level's
            ``channels``) or ``"feature"`` (the skip feature's own channels, as smp's).

    Shapes: features -> the last node of each used skip level, shallow to deep:
    [(B, out_channels[j], H / out_strides[j], W / out_strides[j])].
    """

    min_features = 2

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: Sequence[int] | None = None,
                 complexity: int = 0, upsample: str = "bilinear", min_stride: int = 1, activation: str = "relu",
                 norm: str = "bn", node: str = "split", inner_width: str = "level") -> None:
        super().__init__(in_channels, in_strides)
        check_positive_int(min_stride, "min_stride", "UnetPlusPlusDecoder")
        if node not in NODES or inner_width not in INNER_WIDTHS:
            raise ValueError(f"UnetPlusPlusDecoder: node must be one of {list(NODES)} and inner_width one of "
                             f"{list(INNER_WIDTHS)}, got {node!r} and {inner_width!r}")
        self.first = next((i for i, s in enumerate(self.in_strides) if s >= min_stride), len(self.in_strides))
        skips = list(range(self.first, len(self.in_channels) - 1))
        if not skips:
            raise ValueError(f"UnetPlusPlusDecoder: min_stride={min_stride} leaves no skip feature among strides "
                             f"{in_strides}")
        if channels is None:
            widths = [default_width(self.in_strides[i]) for i in skips]
        else:
            widths = [int(c) for c in channels]
            if len(widths) != len(skips):
                raise ValueError(f"UnetPlusPlusDecoder: channels {list(channels)} must give one width per skip level "
                                 f"({len(skips)}: strides {[self.in_strides[i] for i in skips]})")
        self._widths = widths
        depth = len(skips)  # L: levels 0..L-1 are skips, level L the deepest feature
        feats = [self.in_channels[i] for i in skips] + [self.in_channels[-1]]
        inner = feats if inner_width == "feature" else widths
        # width of X(i, j): the feature's for j = 0, the level's (inner_width) for the nodes, the level's last
        # node: the level's channels
        width = [[feats[i]] + [inner[i]] * (depth - i - 1) + [widths[i]] for i in range(depth)] + [[feats[depth]]]
        self.nodes = nn.ModuleDict()
        # built in the order forward runs them: by column j, deep to shallow
        for j in range(1, depth + 1):
            for i in range(depth - j, -1, -1):
                scale = stride_ratio(self.in_strides[skips[i] + 1], self.in_strides[skips[i]], "UnetPlusPlusDecoder")
                self.nodes[f"x{i}_{j}"] = NODES[node](sum(width[i][:j]), width[i + 1][j - 1], width[i][j], scale,
                                                      upsample, complexity, activation, norm)
        self.depth = depth

    @property
    def out_channels(self) -> list[int]:
        return list(self._widths)

    @property
    def out_strides(self) -> list[int]:
        return self.in_strides[self.first:-1]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decode; returns the last node of every used skip level, shallow to deep."""
        rows = [[f] for f in features[self.first:]]  # rows[i][j] = X(i, j)
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j, -1, -1):
                rows[i].append(self.nodes[f"x{i}_{j}"](rows[i][:j], rows[i + 1][j - 1]))
        return [rows[i][-1] for i in range(self.depth)]
