"""Building blocks: conv-norm-activation blocks of selectable depth, and upsampling modules.

Modules here take numbers and short option names; names are checked once, at
construction, with errors that list the valid choices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.errors import short_repr, unknown_name_error

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "identity": nn.Identity,
}

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "gn": lambda c: nn.GroupNorm(_group_count(c), c),
    "identity": lambda c: nn.Identity(),
}

# interpolation modes, and the learned (convolutional) ones
INTERPOLATION_MODES = ("nearest", "bilinear")
CONV_UPSAMPLE_MODES = ("transpose", "pixelshuffle")
# umbrella names accepted everywhere an upsampling mode is
# extra conv layers of one block: a few in practice; a huge value would build until memory runs out
MAX_COMPLEXITY = 32
UPSAMPLE_ALIASES = {"interpolate": "bilinear", "conv": "transpose"}


def _group_count(channels: int) -> int:
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


def make_activation(name: str | None) -> nn.Module:
    """Return a fresh activation module for ``name`` (``None`` means identity)."""
    key = "identity" if name is None else str(name).lower()
    if key not in ACTIVATIONS:
        raise unknown_name_error("activation", str(name), ACTIVATIONS)
    return ACTIVATIONS[key]()


def make_norm(name: str | None, channels: int) -> nn.Module:
    """Return a fresh normalization module for ``name`` (``"bn"``, ``"gn"``, ``None``)."""
    key = "identity" if name is None else str(name).lower()
    if key not in NORMS:
        raise unknown_name_error("norm", str(name), NORMS)
    return NORMS[key](channels)


def resolve_upsample_mode(mode: str) -> str:
    """Map an upsampling mode or alias to one of nearest/bilinear/transpose/pixelshuffle."""
    key = UPSAMPLE_ALIASES.get(mode, mode)
    if key not in INTERPOLATION_MODES + CONV_UPSAMPLE_MODES:
        raise unknown_name_error("upsample mode", str(mode),
                                 INTERPOLATION_MODES + CONV_UPSAMPLE_MODES + tuple(UPSAMPLE_ALIASES))
    return key


def _check_channels(**named: int) -> None:
    for name, value in named.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias when normalized) -> norm -> activation.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 activation: str | None = "relu", norm: str | None = "bn", dilation: int = 1) -> None:
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        padding = dilation * (kernel_size // 2)
        has_norm = norm is not None and str(norm).lower() != "identity"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=not has_norm),
            make_norm(norm, out_channels),
            make_activation(activation),
        )


class SeparableConvBnAct(nn.Sequential):
    """Depthwise 3x3 conv (optionally dilated) -> pointwise 1x1 conv -> norm -> activation.

    Far cheaper than a full 3x3 conv (DeepLabV3+'s decoder and ASPP use it): the spatial
    filter costs C_in * 9 per pixel instead of C_in * C_out * 9.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 activation: str | None = "relu", norm: str | None = "bn") -> None:
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        has_norm = norm is not None and str(norm).lower() != "identity"
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=dilation * (kernel_size // 2),
                      dilation=dilation, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=not has_norm),
            make_norm(norm, out_channels),
            make_activation(activation),
        )


def get_block(in_channels: int, out_channels: int, complexity: int = 1, kernel_size: int = 3,
              stride: int = 1, activation: str | None = "relu", norm: str | None = "bn") -> nn.Sequential:
    """A Conv-Norm-Act block followed by ``complexity`` more, each with its own weights.

    Catalyst repeated the same module objects (silently shared weights); here every
    repeat is a new module.

    Args:
        in_channels: C_in of the input (B, C_in, H, W).
        out_channels: C_out of every conv.
        complexity: number of extra Conv-Norm-Act layers after the first (>= 0).
        kernel_size: conv kernel size (odd; padding keeps the size).
        stride: stride of the first conv only.
        activation: ``"relu"``, ``"leaky_relu"``, ``"elu"``, ``"gelu"``, ``"silu"`` or ``None``.
        norm: ``"bn"``, ``"gn"`` or ``None``.

    Returns:
        ``nn.Sequential`` mapping (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """
    if not isinstance(complexity, int) or isinstance(complexity, bool) or not 0 <= complexity <= MAX_COMPLEXITY:
        raise ValueError(f"complexity must be an int in [0, {MAX_COMPLEXITY}], got {short_repr(complexity)}")
    layers = [ConvBnAct(in_channels, out_channels, kernel_size, stride, activation, norm)]
    layers += [ConvBnAct(out_channels, out_channels, kernel_size, 1, activation, norm) for _ in range(complexity)]
    return nn.Sequential(*layers)


def _channels_last_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def keep_channels_last_grad(y: torch.Tensor) -> torch.Tensor:
    """Make the gradient that reaches ``y`` (B, C, H, W) channels_last before ``y``'s backward runs.

    Backward of a concat hands each input a channel slice of the output's gradient; in
    channels_last that slice is neither NCHW- nor NHWC-contiguous, and interpolation's
    backward then copies it to NCHW and runs its slow NCHW kernel (resnet34 Unet, 4x256x256
    on CPU: ~30 ms of a ~700 ms train step at stride 2 alone). A copy to channels_last
    costs ~1 ms and lets the fast kernel run. Does nothing unless ``y`` needs a gradient,
    is channels_last with C > 1, and eager autograd is running (not tracing or compiling).
    Returns ``y`` itself.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or not y.requires_grad:
        return y  # checked first: a traced graph must not depend on this helper
    if y.dim() == 4 and y.shape[1] > 1 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
        y.register_hook(_channels_last_grad)
    return y


class Interpolate(nn.Module):
    """Resize by a fixed integer ``scale`` with nearest or bilinear interpolation.

    ``align_corners=True`` (bilinear only): corner pixels aligned, as smp's heads' ``nn.Upsample``.

    Shapes: (B, C, H, W) -> (B, C, H * scale, W * scale).
    """

    def __init__(self, scale: int = 2, mode: str = "bilinear", align_corners: bool = False) -> None:
        super().__init__()
        if mode not in INTERPOLATION_MODES:
            raise unknown_name_error("interpolation mode", mode, INTERPOLATION_MODES)
        self.scale = int(scale)
        self.mode = mode
        self.align_corners = bool(align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` (B, C, H, W) by ``scale``."""
        if self.scale == 1:
            return x
        align = self.align_corners if self.mode == "bilinear" else None
        return keep_channels_last_grad(F.interpolate(x, scale_factor=float(self.scale), mode=self.mode,
                                                     align_corners=align))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, mode={self.mode!r}" + (", align_corners=True" if self.align_corners else "")


def make_upsample(mode: str, channels: int, scale: int = 2, out_channels: int | None = None,
                  align_corners: bool = False) -> nn.Module:
    """Upsample by ``scale`` with interpolation or a learned convolution.

    Args:
        mode: ``"nearest"`` / ``"bilinear"`` (alias ``"interpolate"``): parameter-free resize;
            ``"transpose"`` (alias ``"conv"``): ConvTranspose2d with kernel = stride = scale;
            ``"pixelshuffle"``: 1x1 conv to C_out * scale^2 then PixelShuffle.
        channels: C_in of the input.
        scale: integer factor (1 means identity for interpolation modes).
        out_channels: C_out; only the learned modes can change it (default: C_in).
        align_corners: bilinear interpolation with aligned corners (smp's heads); other modes ignore it.

    Returns:
        Module mapping (B, C_in, H, W) -> (B, C_out, H * scale, W * scale).
    """
    mode = resolve_upsample_mode(mode)
    out_channels = channels if out_channels is None else out_channels
    _check_channels(channels=channels, out_channels=out_channels)
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"upsample scale must be an int >= 1, got {scale!r}")
    if mode in INTERPOLATION_MODES:
        if out_channels != channels:
            raise ValueError(f"{mode} upsampling keeps channels ({channels}); got out_channels={out_channels}")
        return Interpolate(scale, mode, align_corners)
    if scale == 1:
        return nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
    if mode == "transpose":
        return nn.ConvTranspose2d(channels, out_channels, kernel_size=scale, stride=scale)
    return nn.Sequential(nn.Conv2d(channels, out_channels * scale * scale, 1), nn.PixelShuffle(scale))
