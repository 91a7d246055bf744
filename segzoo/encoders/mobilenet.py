"""torchvision's MobileNetV2 as an encoder (the backbone of Catalyst 19.x's MobileUnet)."""

from __future__ import annotations

import numbers

import torch
import torch.nn as nn
import torchvision

from segzoo.encoders.base import EncoderSpec, register_encoder
from segzoo.encoders.weights import (
    StateDictSource,
    adapt_stem_weight,
    load_into,
    pretrained_state_dict,
    read_state_dict,
)

#: where torchvision's ``mobilenet_v2().features`` (19 modules) is cut: the five stages end after the
#: 16-channel block (stride 2), the last 24- (4), 32- (8) and 96-channel (16) blocks and the final 1x1 conv (32)
MOBILENETV2_CUTS = (2, 4, 7, 14, 19)
MOBILENETV2_STRIDES = [2, 4, 8, 16, 32]


@register_encoder("mobilenetv2")
class MobileNetV2Encoder(EncoderSpec):
    """torchvision's MobileNetV2 ``features`` cut into five stages at strides 2, 4, 8, 16 and 32.

    The stage outputs are the feature maps Catalyst 19.x's MobileUnet fed its decoder: with
    ``width_mult=1`` 16, 24, 32, 96 and 1280 channels (the last one after MobileNetV2's final
    1x1 conv). The classifier is not built.

    Args:
        width_mult: channel multiplier of torchvision's ``mobilenet_v2`` (a number > 0).
        pretrained: load torchvision's ImageNet weights (``width_mult=1.0`` only; hub cache first,
            see :mod:`segzoo.encoders.weights`).
        requires_grad: train the encoder (``None``: ``not pretrained``). ``False`` freezes it,
            BatchNorm statistics included.
        state_dict: a path or dict in torchvision's ``mobilenet_v2`` key format (``classifier.*``
            keys optional), loaded instead of ``pretrained`` weights.
        in_channels: input channels; with weights, the stem is adapted (see
            :func:`segzoo.encoders.weights.adapt_stem_weight`).

    Shapes: (B, in_channels, H, W) -> [(B, out_channels[i], H / 2**(i+1), W / 2**(i+1)) for i in 0..4].
    """

    def __init__(self, width_mult: float = 1.0, pretrained: bool = False, requires_grad: bool | None = True,
                 state_dict: StateDictSource | None = None, in_channels: int = 3) -> None:
        super().__init__()
        if isinstance(width_mult, bool) or not isinstance(width_mult, numbers.Real) or not width_mult > 0:
            raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
        if pretrained and state_dict is None and width_mult != 1.0:
            raise ValueError(f"pretrained ImageNet weights exist for width_mult=1.0 only (torchvision's "
                             f"mobilenet_v2), got width_mult={width_mult!r}; pass state_dict='path/to/file.pth' "
                             f"(a torch.save(torchvision.models.mobilenet_v2(width_mult={width_mult!r}).state_dict()) "
                             f"file) or pretrained=False")
        self.width_mult = float(width_mult)
        self.in_channels = in_channels

        net = torchvision.models.mobilenet_v2(weights=None, width_mult=self.width_mult)
        weights = None
        if state_dict is not None:
            weights = read_state_dict(state_dict)
        elif pretrained:
            weights = pretrained_state_dict("mobilenet_v2")
        if weights is not None:
            load_into(net, weights, f"torchvision mobilenet_v2(width_mult={self.width_mult})",
                      ignore_prefixes=("classifier.",))
        features = list(net.features)
        if in_channels != 3:
            stem = features[0][0]
            conv = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
            if weights is not None:
                with torch.no_grad():
                    conv.weight.copy_(adapt_stem_weight(stem.weight, in_channels))
            features[0][0] = conv
        starts = (0, *MOBILENETV2_CUTS[:-1])
        self.stages = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts, MOBILENETV2_CUTS))
        self._channels = [int(stage[-1].out_channels) for stage in self.stages]
        if requires_grad is None:
            requires_grad = not (pretrained or state_dict is not None)
        if not requires_grad:
            self.freeze()

    @property
    def out_channels(self) -> list[int]:
        return list(self._channels)

    @property
    def out_strides(self) -> list[int]:
        return list(MOBILENETV2_STRIDES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> the five stage outputs, shallow to deep."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
