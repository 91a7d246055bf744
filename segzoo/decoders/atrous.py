"""Dilated ("atrous") convolutions run without the work their zero padding costs.

ASPP's large rates on small features make most of a dilated kernel's taps read padding: rate 36
at stride 8 of a 256 x 256 input (a 32 x 32 feature) reads only the centre tap, rate 24 reads a
quarter of the image per outer tap. oneDNN, torch's CPU convolution library, runs depthwise
convolutions with padding beyond 6 on its generic grouped-GEMM path over the whole padded input,
and in channels_last that path is slow (a 4 x 512 x 32 x 32 depthwise 3x3 at dilation 24: ~40 ms
on one AVX-512 core, against ~6 ms for the multiply-adds of its in-bounds taps).
:func:`conv_in_bounds` gives the convolution's exact result with only the taps that see the input.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# a channels_last depthwise conv runs as in-bounds tap multiply-adds when at most this share of
# its k*k*H*W tap reads fall inside the input (measured, 4 x 512 x 32 x 32 on one AVX-512 core:
# share 0.25 (dilation 24) 6.5 ms forward / 20 ms forward+backward against oneDNN's 42 / 100 ms;
# share 0.56 (dilation 12) 15 / 45 ms against 14 / 46 ms; share 0.77 (dilation 6) 19 / 62 against 3 / 59)
TAPS_MAX_SHARE = 0.5


def graph_capture() -> bool:
    """Whether a graph is being recorded (tracing, compiling, exporting): shape-dependent paths must not be baked."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.onnx.is_in_onnx_export())


def _taps(d: int, k: int, n: int) -> list[tuple[int, slice, slice]]:
    """Kernel taps along an axis of size ``n`` (dilation ``d``, ``k`` taps, padding ``d * (k // 2)``) that read
    the input: (tap index, source slice of the input, destination slice of the output)."""
    taps = []
    for t in range(k):
        o = (t - k // 2) * d
        if abs(o) < n:
            taps.append((t, slice(max(0, o), n + min(0, o)), slice(max(0, -o), n - max(0, o))))
    return taps


class _DepthwiseTaps(torch.autograd.Function):
    """Depthwise "same" conv (weight (C, 1, kh, kw), stride 1, padding dilation * (k // 2), no bias) as one
    multiply-add per in-bounds tap over the part of the image it reads; exact, any memory format."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
        ch, cw = weight.shape[2] // 2, weight.shape[3] // 2
        rows, cols = _taps(dh, weight.shape[2], x.shape[2]), _taps(dw, weight.shape[3], x.shape[3])
        w = weight.reshape(1, weight.shape[0], weight.shape[2], weight.shape[3])
        out = x * w[:, :, ch, cw, None, None]
        for i, ys, yd in rows:
            for j, xs, xd in cols:
                if (i, j) != (ch, cw):
                    out[:, :, yd, xd].addcmul_(x[:, :, ys, xs], w[:, :, i, j, None, None])
        return out

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, dh, dw = inputs
        ctx.save_for_backward(x, weight)
        ctx.dilation = (dh, dw)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        (dh, dw), ch, cw = ctx.dilation, weight.shape[2] // 2, weight.shape[3] // 2
        rows, cols = _taps(dh, weight.shape[2], x.shape[2]), _taps(dw, weight.shape[3], x.shape[3])
        w = weight.reshape(1, weight.shape[0], weight.shape[2], weight.shape[3])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # the transposed conv: each tap's read region gets its output's gradient
            grad_x = grad * w[:, :, ch, cw, None, None]
            for i, ys, yd in rows:
                for j, xs, xd in cols:
                    if (i, j) != (ch, cw):
                        grad_x[:, :, ys, xs].addcmul_(grad[:, :, yd, xd], w[:, :, i, j, None, None])
        if ctx.needs_input_grad[1]:  # taps that read only padding get zero
            grad_w = torch.zeros_like(weight)
            for i, ys, yd in rows:
                for j, xs, xd in cols:
                    grad_w[:, 0, i, j] = (grad[:, :, yd, xd] * x[:, :, ys, xs]).sum(dim=(0, 2, 3))
        return grad_x, grad_w, None, None


def _tap_share(kh: int, kw: int, dh: int, dw: int, h: int, w: int) -> float:
    """Share of a "same" conv's k*k*h*w tap reads that fall inside an h x w input."""
    rows = sum(h - abs((t - kh // 2) * dh) for t in range(kh) if abs((t - kh // 2) * dh) < h)
    cols = sum(w - abs((t - kw // 2) * dw) for t in range(kw) if abs((t - kw // 2) * dw) < w)
    return rows * cols / (kh * kw * h * w)


def conv_in_bounds(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a stride-1 "same" conv (padding ``dilation * (k // 2)``), without the work of the
    kernel taps that read zero padding. Same result, within float rounding.

    - Along an axis of size n <= j * d, the taps at offset +-j * d read padding for every output
      pixel: they are dropped with that padding (a 3x3 at dilation >= H and W is a 1x1; a depthwise
      1x1 is a per-channel scale).
    - A depthwise conv on a channels_last CPU input whose in-bounds tap reads are at most
      ``TAPS_MAX_SHARE`` of all runs as one multiply-add per in-bounds tap (forward and backward).

    Graphs being traced, compiled or exported, and other convs (strided, other padding modes),
    call ``conv`` unchanged, so an exported graph fits every input size.

    Shapes: (B, C_in, H, W) -> (B, C_out, H, W).
    """
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    if graph_capture() or conv.stride != (1, 1) or conv.padding_mode != "zeros" or not kh % 2 or not kw % 2 \
            or conv.padding != (dh * (kh // 2), dw * (kw // 2)) or x.dim() != 4:
        return conv(x)
    h, w = x.shape[-2:]
    rh, rw = min(kh // 2, (h - 1) // dh), min(kw // 2, (w - 1) // dw)  # reach of the taps that read the input
    depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.bias is None
    if depthwise and (rh or rw) and x.device.type == "cpu" and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last) and _tap_share(kh, kw, dh, dw, h, w) <= TAPS_MAX_SHARE:
        return _DepthwiseTaps.apply(x, conv.weight, dh, dw)
    if (rh, rw) == (kh // 2, kw // 2):
        return conv(x)
    weight = conv.weight[:, :, kh // 2 - rh:kh // 2 + rh + 1, kw // 2 - rw:kw // 2 + rw + 1]
    if rh == rw == 0 and conv.groups == conv.in_channels == conv.out_channels:
        # a depthwise 1x1 is a per-channel scale (as a conv, torch runs one tiny conv per channel)
        y = x * weight.reshape(1, -1, 1, 1)
        return y if conv.bias is None else y + conv.bias.reshape(1, -1, 1, 1)
    return F.conv2d(x, weight, conv.bias, 1, (rh * dh, rw * dw), (dh if rh else 1, dw if rw else 1), conv.groups)
