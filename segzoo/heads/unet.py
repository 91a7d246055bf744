"""UnetHead: logits from the finest decoder feature."""

from __future__ import annotations

import torch
import torch.nn as nn

from segzoo.blocks import INTERPOLATION_MODES, ConvBnAct, make_upsample, resolve_upsample_mode
from segzoo.heads.base import HeadSpec, register_head


@register_head("unet")
class UnetHead(HeadSpec):
    """Optional upsample blocks, a 1x1 conv to logits, then upsampling to full size.

    Producing logits below full resolution and upsampling them is much cheaper than
    running convolutions at full resolution, and loses little on masks with smooth
    borders (see BENCHMARKS.md for the measured Dice).

    Args:
        in_channels: decoder channels (only the first, finest feature is used).
        out_channels: number of classes.
        in_strides: decoder strides; the head upsamples by ``in_strides[0]``.
        dropout: Dropout2d rate before the classifier.
        num_upsample_blocks: learned x2 steps (upsample + 3x3 conv, channels halved, at least 16)
            before the classifier; each must fit in ``in_strides[0]``.
        upsample: mode of those steps and of the final logits resize: ``"bilinear"`` /
            ``"nearest"`` (alias ``"interpolate"``), ``"transpose"`` (alias ``"conv"``), ``"pixelshuffle"``.
        block_channels: width of every upsample block (default: halved at each, at least 16).
        block_convs: 3x3 conv-norm-act layers per upsample block (default 1; smp's Unet: 2).
        kernel_size: the classifier's kernel (default 1; smp's heads: 3).
        norm: normalization of the upsample blocks' convs (``"bn"``, ``"identity"``...).
        align_corners: the final bilinear logits resize aligns corner pixels (smp's heads; default ``False``).

    Shapes: [(B, C, H / s, W / s), ...] -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: list[int], out_channels: int, in_strides: list[int], dropout: float = 0.0,
                 num_upsample_blocks: int = 0, upsample: str = "bilinear", block_channels: int | None = None,
                 block_convs: int = 1, kernel_size: int = 1, norm: str = "bn", align_corners: bool = False) -> None:
        super().__init__(in_channels, out_channels, in_strides)
        stride = self.in_strides[0]
        if not isinstance(num_upsample_blocks, int) or num_upsample_blocks < 0 or 2**num_upsample_blocks > stride \
                or stride % 2**num_upsample_blocks:
            raise ValueError(f"UnetHead: num_upsample_blocks={num_upsample_blocks!r} does not fit the feature "
                             f"stride {stride} (need 2**n dividing {stride})")
        if not isinstance(block_convs, int) or block_convs < 1 or not isinstance(kernel_size, int) \
                or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"UnetHead: block_convs must be an int >= 1 and kernel_size an odd int >= 1, got "
                             f"{block_convs!r} and {kernel_size!r}")
        learned = resolve_upsample_mode(upsample) not in INTERPOLATION_MODES
        blocks: list[nn.Module] = []
        c = self.in_channels[0]
        for _ in range(num_upsample_blocks):
            c_next = max(c // 2, 16) if block_channels is None else int(block_channels)
            up_channels = c_next if learned else c
            blocks += [make_upsample(upsample, c, 2, out_channels=up_channels, align_corners=align_corners),
                       ConvBnAct(up_channels, c_next, norm=norm)]
            blocks += [ConvBnAct(c_next, c_next, norm=norm) for _ in range(block_convs - 1)]
            c = c_next
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(c, out_channels, kernel_size, padding=kernel_size // 2)
        self.upsample = make_upsample(upsample, out_channels, stride // 2**num_upsample_blocks,
                                      align_corners=align_corners)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B, out_channels, H, W) from ``features[0]``."""
        return self.upsample(self.classifier(self.dropout(self.blocks(features[0]))))
