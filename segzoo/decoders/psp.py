"""PSPDecoder: pyramid pooling over one feature map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.blocks import ConvBnAct
from segzoo.decoders.base import DecoderSpec, register_decoder


def _pool_matrix(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, n) averaging matrix of adaptive average pooling along one axis."""
    i = torch.arange(size, device=like.device).unsqueeze(1)
    j = torch.arange(n, device=like.device).unsqueeze(0)
    start = torch.div(i * n, size, rounding_mode="floor")
    end = torch.div((i + 1) * n + size - 1, size, rounding_mode="floor")
    m = ((j >= start) & (j < end)).to(like.dtype)
    return m / m.sum(dim=1, keepdim=True)


def pyramid_avg_pool(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """``[F.adaptive_avg_pool2d(x, s) for s in sizes]``, reading ``x`` once, as matrix products.

    ONNX and torch.export cannot express adaptive pooling whose bins depend on a dynamic
    input size; this form can (its bins are computed from the runtime shape). The pooling
    matrices of all sizes are stacked, so ``x`` is read once whatever the number of sizes,
    and a channels_last ``x`` is read in its own layout (no copy to NCHW).

    Shapes: (B, C, H, W) -> [(B, C, s, s) for s in sizes].
    """
    b, c, h, w = x.shape
    ph = torch.cat([_pool_matrix(h, s, x) for s in sizes])  # (S, H), S = sum(sizes)
    pw = torch.cat([_pool_matrix(w, s, x) for s in sizes])  # (S, W)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # a view: no copy
        rows = (ph @ nhwc).reshape(b, -1, w, c)  # (B, S, W, C)
        grid = (pw @ rows).permute(0, 3, 1, 2)  # (B, C, S, S), channels_last strides
    else:
        grid = ph @ x @ pw.transpose(0, 1)  # (B, C, S, S)
    out, offset = [], 0
    for s in sizes:
        out.append(grid[:, :, offset:offset + s, offset:offset + s])
        offset += s
    return out


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Exactly ``F.adaptive_avg_pool2d(x, size)``, written as matrix products (see :func:`pyramid_avg_pool`).

    Shapes: (B, C, H, W) -> (B, C, size, size).
    """
    return pyramid_avg_pool(x, [size])[0]


class PyramidPooling(nn.Module):
    """One PSP branch: adaptive average pool to ``size``, 1x1 conv + ReLU, resize back.

    No BatchNorm by default: the 1x1 branch has one value per channel and would fail
    (or be meaningless) at batch size 1 in training. ``norm`` (e.g. ``"bn"``, as smp) normalizes the
    branches of ``size > 1`` only; ``align_corners``: the bilinear resize back (smp: ``True``).

    Shapes: (B, C, h, w) -> (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, size: int, norm: str | None = None,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.size = int(size)
        self.align_corners = bool(align_corners)
        if norm is None or self.size == 1:  # a norm over a 1x1 map: see above
            self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        else:  # smp's PSP branches: conv-norm-ReLU
            self.conv = ConvBnAct(in_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool, project, and resize to ``x``'s size."""
        return self.project(adaptive_avg_pool(x, self.size), x.shape[-2:])

    def project(self, pooled: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Project an already pooled map (B, C, size, size) and resize it to ``size`` (h, w)."""
        y = self.conv(pooled)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)


@register_decoder("psp")
class PSPDecoder(DecoderSpec):
    """Pyramid scene parsing on the deepest given feature (stride 8 for ResnetPSPnet).

    Args:
        in_channels: feature channels, shallow to deep (only the last is used).
        in_strides: feature strides.
        pool_sizes: output sizes of the pooling branches.
        out_channels: channels of the fused output.
        dropout: Dropout2d rate on the output.
        norm: normalization of the fusing 1x1 conv (default ``"bn"``; ``"identity"``: a conv with bias).
        branch_norm: normalization of the pooling branches of size > 1 (default ``None``: none; smp: ``"bn"``).
        align_corners: the branches' bilinear resize back (default ``False``; smp: ``True``).
        input_last: concatenate the input after the branches (smp's order) instead of before.

    Shapes: [..., (B, C, H / s, W / s)] -> [(B, out_channels, H / s, W / s)].
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], pool_sizes: Sequence[int] = (1, 2, 3, 6),
                 out_channels: int = 256, dropout: float = 0.1, norm: str = "bn", branch_norm: str | None = None,
                 align_corners: bool = False, input_last: bool = False) -> None:
        super().__init__(in_channels, in_strides)
        c = self.in_channels[-1]
        branch = max(c // len(pool_sizes), 1)
        self.branches = nn.ModuleList(PyramidPooling(c, branch, s, branch_norm, align_corners) for s in pool_sizes)
        self.fuse = ConvBnAct(c + branch * len(pool_sizes), out_channels, 1, norm=norm)
        self.input_last = bool(input_last)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.declare_outputs([out_channels], [self.in_strides[-1]])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pool the deepest feature at several scales and fuse."""
        x = features[-1]
        pooled = pyramid_avg_pool(x, [b.size for b in self.branches])
        branches = [b.project(p, x.shape[-2:]) for b, p in zip(self.branches, pooled)]
        x = torch.cat(branches + [x] if self.input_last else [x] + branches, dim=1)
        return [self.dropout(self.fuse(x))]
