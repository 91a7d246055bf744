"""The encoder contract."""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn as nn

from segzoo.parts import DeclaresFeatures
from segzoo.registry import Registry

ENCODERS = Registry("encoder")
register_encoder = ENCODERS.register
create_encoder = ENCODERS.create
list_encoders = ENCODERS.names


class EncoderSpec(DeclaresFeatures):
    """Base class of encoders: an image in, a list of feature maps out, shallow to deep.

    A custom encoder subclasses this and implements :attr:`out_channels`,
    :attr:`out_strides` and :meth:`forward`; every segzoo model then accepts it::

        class TinyEncoder(EncoderSpec):
            def __init__(self):
                super().__init__()
                self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
                self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)

            @property
            def out_channels(self): return [8, 16]

            @property
            def out_strides(self): return [2, 4]

            def forward(self, x):
                a = self.a(x)
                return [a, self.b(a)]

        model = Unet(encoder=TinyEncoder(), num_classes=3)

    Shapes: (B, in_channels, H, W) -> [(B, out_channels[i], H / out_strides[i], W / out_strides[i])];
    ``out_channels`` / ``out_strides`` are declared as for every part (:class:`segzoo.parts.DeclaresFeatures`).
    ``in_channels`` (optional, ``None`` = unchecked) lets models reject wrong inputs early.
    :attr:`size_multiple` (optional) says what input sizes the encoder needs.
    """

    in_channels: int | None = None

    @property
    def size_multiple(self) -> int:
        """What input H and W must be multiples of (a model pads inputs to it and crops the logits back).

        Default: the deepest of :attr:`out_strides`. An encoder with another constraint (attention
        windows, a fixed input size) overrides it.
        """
        return max(self.out_strides)

    @abstractmethod
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Map (B, C_in, H, W) to feature maps, shallow to deep."""

    def freeze(self) -> None:
        """Stop gradients to the encoder and keep its normalization layers in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self.train(self.training)

    def unfreeze(self) -> None:
        """Undo :meth:`freeze`."""
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen = False
        self.train(self.training)

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` is in effect."""
        return getattr(self, "_frozen", False)

    def train(self, mode: bool = True) -> EncoderSpec:
        """Set train/eval mode; a frozen encoder keeps its BatchNorm statistics fixed."""
        super().train(mode)
        if mode and self.frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
