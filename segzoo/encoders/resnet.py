"""torchvision ResNet encoders (resnet18/34/50/101/152)."""

from __future__ import annotations

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
from segzoo.errors import unknown_name_error

RESNET_CHANNELS = {
    "resnet18": [64, 64, 128, 256, 512],
    "resnet34": [64, 64, 128, 256, 512],
    "resnet50": [64, 256, 512, 1024, 2048],
    "resnet101": [64, 256, 512, 1024, 2048],
    "resnet152": [64, 256, 512, 1024, 2048],
}
RESNET_STRIDES = [2, 4, 8, 16, 32]
OUTPUT_STRIDES = (8, 16, 32)


def dilate_stage(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Replace a ResNet stage's stride 2 by dilation, in place (torchvision's ``replace_stride_with_dilation``).

    Every stride becomes 1; the first block keeps the ``previous`` dilation, the other
    blocks' 3x3 convolutions use ``dilation``. Weights are untouched, so ImageNet weights
    load as they are. Works for BasicBlock (resnet18/34) too, which torchvision refuses.
    """
    for k, block in enumerate(layer):
        rate = previous if k == 0 else dilation
        for mod in block.modules():
            if isinstance(mod, nn.Conv2d):
                mod.stride = (1, 1)
                if mod.kernel_size == (3, 3):
                    mod.dilation = (rate, rate)
                    mod.padding = (rate, rate)


@register_encoder("resnet")
class ResnetEncoder(EncoderSpec):
    """A torchvision ResNet cut into five stages.

    Stage 0 is ``conv1 + bn1 + relu`` (stride 2), stage 1 is ``maxpool + layer1`` (stride 4),
    stages 2-4 are ``layer2..layer4`` (strides 8, 16, 32). Only the stages up to the
    deepest requested one are kept and run (PSP needs stride 8 only).

    ``output_stride`` 16 or 8 replaces the stride of layer4 (and layer3) by dilation (rates 2,
    and 2 then 4), as DeepLab does: the deep features keep a finer resolution, the weights are the same.

    Args:
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        pretrained: load torchvision's ImageNet weights (hub cache first; see
            :mod:`segzoo.encoders.weights`).
        requires_grad: train the encoder (``None``: ``not pretrained``). ``False`` freezes it,
            BatchNorm statistics included.
        layers_indices: which stages to output (default all: ``[0, 1, 2, 3, 4]``).
        state_dict: a path or dict in torchvision's key format (``fc.*`` keys optional),
            loaded instead of ``pretrained`` weights.
        in_channels: input channels; with weights, the stem is adapted (see
            :func:`segzoo.encoders.weights.adapt_stem_weight`).
        output_stride: stride of the deepest stage: 32 (plain ResNet), 16 or 8 (dilated).
        dilation: ``"torchvision"`` (default: a dilated stage's first block keeps the previous stage's
            dilation, as torchvision's ``replace_stride_with_dilation``) or ``"smp"`` (every block of a dilated
            stage at its rate, as smp's encoders: layer4 at 2 for output stride 16; layer3 at 2, layer4 at 4
            for 8). The weights are the same, the function differs.

    Shapes: (B, in_channels, H, W) -> [(B, RESNET_CHANNELS[arch][i], H / s_i, W / s_i) for i in layers_indices],
    ``s_i = min(2**(i+1), output_stride)``.
    """

    def __init__(self, arch: str = "resnet18", pretrained: bool = True, requires_grad: bool | None = True,
                 layers_indices: list[int] | None = None, state_dict: StateDictSource | None = None,
                 in_channels: int = 3, output_stride: int = 32, dilation: str = "torchvision") -> None:
        super().__init__()
        if arch not in RESNET_CHANNELS:
            raise unknown_name_error("resnet arch", str(arch), RESNET_CHANNELS)
        indices = [0, 1, 2, 3, 4] if layers_indices is None else list(layers_indices)
        if not indices or sorted(set(indices)) != indices or not all(0 <= i <= 4 for i in indices):
            raise ValueError(f"layers_indices must be increasing stage numbers in 0..4, got {layers_indices!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
        if dilation not in ("torchvision", "smp"):
            raise ValueError(f"dilation must be 'torchvision' or 'smp', got {dilation!r}")
        self.arch = arch
        self.output_stride = output_stride
        self.in_channels = in_channels
        self.layers_indices = indices

        net = getattr(torchvision.models, arch)(weights=None)
        weights = None
        if state_dict is not None:
            weights = read_state_dict(state_dict)
        elif pretrained:
            weights = pretrained_state_dict(arch)
        if weights is not None:
            load_into(net, weights, f"torchvision {arch}", ignore_prefixes=("fc.",))
        if in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
            if weights is not None:
                with torch.no_grad():
                    net.conv1.weight.copy_(adapt_stem_weight(old.weight, in_channels))

        rate4, rate3 = (2 if output_stride == 16 else 4), 2
        if output_stride <= 16:
            dilate_stage(net.layer4, rate4 if dilation == "smp" else 1 if output_stride == 16 else 2, rate4)
        if output_stride == 8:
            dilate_stage(net.layer3, rate3 if dilation == "smp" else 1, rate3)
        stages = [
            nn.Sequential(net.conv1, net.bn1, net.relu),
            nn.Sequential(net.maxpool, net.layer1),
            net.layer2,
            net.layer3,
            net.layer4,
        ]
        self.stages = nn.ModuleList(stages[: max(indices) + 1])
        if requires_grad is None:
            requires_grad = not (pretrained or state_dict is not None)
        if not requires_grad:
            self.freeze()

    @property
    def out_channels(self) -> list[int]:
        return [RESNET_CHANNELS[self.arch][i] for i in self.layers_indices]

    @property
    def out_strides(self) -> list[int]:
        return [min(RESNET_STRIDES[i], self.output_stride) for i in self.layers_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> the requested stage outputs, shallow to deep."""
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.layers_indices:
                features.append(x)
        return features
