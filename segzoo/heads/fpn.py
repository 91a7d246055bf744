"""FPNHead: one segmentation branch per pyramid level, summed."""

from __future__ import annotations

import torch
import torch.nn as nn

from segzoo.blocks import ConvBnAct, make_upsample
from segzoo.decoders.base import stride_ratio
from segzoo.heads.base import HeadSpec, register_head


@register_head("fpn")
class FPNHead(HeadSpec):
    """Per level a 3x3 conv at the level's own resolution, upsampled to the finest level; sum; classify.

    Each branch convolves once, at its own (coarse) resolution, before being resized:
    cheaper than stacking conv+upsample steps per level.

    Args:
        in_channels: pyramid channels, shallow to deep.
        out_channels: number of classes.
        in_strides: pyramid strides; logits are made at ``in_strides[0]`` then upsampled.
        hidden_channels: width of every branch.
        dropout: Dropout2d rate before the classifier.
        upsample: resize mode of branches and logits (see :func:`segzoo.blocks.make_upsample`).

    Shapes: [(B, C_i, H / s_i, W / s_i)] -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: list[int], out_channels: int, in_strides: list[int], hidden_channels: int = 64,
                 dropout: float = 0.0, upsample: str = "bilinear") -> None:
        super().__init__(in_channels, out_channels, in_strides)
        s0 = self.in_strides[0]
        self.branches = nn.ModuleList(
            nn.Sequential(ConvBnAct(c, hidden_channels),
                          make_upsample(upsample, hidden_channels, stride_ratio(s, s0, "FPNHead")))
            for c, s in zip(self.in_channels, self.in_strides)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(hidden_channels, out_channels, 1)
        self.upsample = make_upsample(upsample, out_channels, s0)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B, out_channels, H, W) from all pyramid levels."""
        x = self.branches[0](features[0])
        for branch, f in zip(self.branches[1:], features[1:]):
            x = x + branch(f)
        return self.upsample(self.classifier(self.dropout(x)))
