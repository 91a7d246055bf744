"""PSPDecoder: pyramid pooling over one feature map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.blocks import ConvBnAct
from segzoo.decoders.base import DecoderSpec


def _pool_matrix(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, n) averaging matrix of adaptive average pooling along one axis."""
    i = torch.arange(size, device=like.device).unsqueeze(1)
    j = torch.arange(n, device=like.device).unsqueeze(0)
    start = torch.div(i * n, size, rounding_mode="floor")
    end = torch.div((i + 1) * n + size - 1, size, rounding_mode="floor")
    m = ((j >= start) & (j < end)).to(like.dtype)
    return m / m.sum(dim=1, keepdim=True)


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Exactly ``F.adaptive_avg_pool2d(x, size)``, written as two matrix products.

    ONNX and torch.export cannot express adaptive pooling whose bins depend on a dynamic
    input size; this form can (its bins are computed from the runtime shape).

    Shapes: (B, C, H, W) -> (B, C, size, size).
    """
    h, w = x.shape[-2], x.shape[-1]
    return _pool_matrix(h, size, x) @ x @ _pool_matrix(w, size, x).transpose(0, 1)


class PyramidPooling(nn.Module):
    """One PSP branch: adaptive average pool to ``size``, 1x1 conv + ReLU, resize back.

    No BatchNorm here: the 1x1 branch has one value per channel and would fail
    (or be meaningless) at batch size 1 in training.

    Shapes: (B, C, h, w) -> (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, size: int) -> None:
        super().__init__()
        self.size = int(size)
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool, project, and resize to ``x``'s size."""
        y = self.conv(adaptive_avg_pool(x, self.size))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class PSPDecoder(DecoderSpec):
    """Pyramid scene parsing on the deepest given feature (stride 8 for ResnetPSPnet).

    Args:
        in_channels: feature channels, shallow to deep (only the last is used).
        in_strides: feature strides.
        pool_sizes: output sizes of the pooling branches.
        out_channels: channels of the fused output.
        dropout: Dropout2d rate on the output.

    Shapes: [..., (B, C, H / s, W / s)] -> [(B, out_channels, H / s, W / s)].
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], pool_sizes: Sequence[int] = (1, 2, 3, 6),
                 out_channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__(in_channels, in_strides)
        c = self.in_channels[-1]
        branch = max(c // len(pool_sizes), 1)
        self.branches = nn.ModuleList(PyramidPooling(c, branch, s) for s in pool_sizes)
        self.fuse = ConvBnAct(c + branch * len(pool_sizes), out_channels, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self._out = out_channels

    @property
    def out_channels(self) -> list[int]:
        return [self._out]

    @property
    def out_strides(self) -> list[int]:
        return [self.in_strides[-1]]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pool the deepest feature at several scales and fuse."""
        x = features[-1]
        x = torch.cat([x] + [b(x) for b in self.branches], dim=1)
        return [self.dropout(self.fuse(x))]
