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
        norm: normalization of the branch convs (default ``"bn"``; smp's FPN: ``"gn"``).
        stepwise: each branch alternates a 3x3 conv and a x2 resize until the finest stride (smp's FPN
            layout: one conv per x2 step) instead of one conv at its own resolution then one resize.
        merge: ``"add"`` (sum the branches) or ``"cat"`` (concatenate them, deep to shallow as smp;
            the classifier then reads ``hidden_channels * len(in_channels)`` channels).
        align_corners: bilinear resizing with ``align_corners=True`` (smp's FPN); default ``False``.

    Shapes: [(B, C_i, H / s_i, W / s_i)] -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: list[int], out_channels: int, in_strides: list[int], hidden_channels: int = 64,
                 dropout: float = 0.0, upsample: str = "bilinear", norm: str = "bn", stepwise: bool = False,
                 merge: str = "add", align_corners: bool = False) -> None:
        super().__init__(in_channels, out_channels, in_strides)
        if merge not in ("add", "cat"):
            raise ValueError(f"FPNHead: merge must be 'add' or 'cat', got {merge!r}")
        s0 = self.in_strides[0]
        self.branches = nn.ModuleList(
            self._branch(c, hidden_channels, stride_ratio(s, s0, "FPNHead"), upsample, norm, stepwise, align_corners)
            for c, s in zip(self.in_channels, self.in_strides)
        )
        self.concat = merge == "cat"
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        width = hidden_channels * len(self.in_channels) if self.concat else hidden_channels
        self.classifier = nn.Conv2d(width, out_channels, 1)
        self.upsample = make_upsample(upsample, out_channels, s0, align_corners=align_corners)

    @staticmethod
    def _branch(c: int, hidden: int, ratio: int, upsample: str, norm: str, stepwise: bool,
                align_corners: bool) -> nn.Sequential:
        if not stepwise:
            return nn.Sequential(ConvBnAct(c, hidden, norm=norm),
                                 make_upsample(upsample, hidden, ratio, align_corners=align_corners))
        steps = ratio.bit_length() - 1
        if ratio != 2**steps:
            raise ValueError(f"FPNHead: stepwise branches need power-of-2 stride ratios, got {ratio}")
        layers: list[nn.Module] = []
        for k in range(max(steps, 1)):  # conv k at index 2k, as smp's k-th block
            layers.append(ConvBnAct(c if k == 0 else hidden, hidden, norm=norm))
            if k < steps:
                layers.append(make_upsample(upsample, hidden, 2, align_corners=align_corners))
        return nn.Sequential(*layers)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B, out_channels, H, W) from all pyramid levels."""
        if self.concat:
            outs: list[torch.Tensor] = []
            for branch, f in zip(self.branches, features):
                outs.insert(0, branch(f))  # deep to shallow, smp's order
            x = torch.cat(outs, dim=1)
        else:
            x = self.branches[0](features[0])
            for branch, f in zip(self.branches[1:], features[1:]):
                x = x + branch(f)
        return self.upsample(self.classifier(self.dropout(x)))
