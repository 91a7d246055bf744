"""The part contract: what every part declares about its outputs, and the feature-list parts (bridges, decoders)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn


def check_features(in_channels: list[int], in_strides: list[int], who: str, minimum: int = 1) -> None:
    """Validate a declared feature list (used by every bridge, decoder and head).

    Raises:
        ValueError: lengths differ, fewer than ``minimum`` features, non-positive values,
            or strides that decrease (features must go shallow to deep).
    """
    if len(in_channels) != len(in_strides):
        raise ValueError(f"{who}: in_channels {list(in_channels)} and in_strides {list(in_strides)} differ in length")
    if len(in_channels) < minimum:
        raise ValueError(f"{who} needs at least {minimum} feature map(s), got {len(in_channels)}")
    if any(int(c) <= 0 for c in in_channels) or any(int(s) <= 0 for s in in_strides):
        raise ValueError(f"{who}: channels and strides must be positive, got {list(in_channels)} / {list(in_strides)}")
    if any(b < a for a, b in zip(in_strides, in_strides[1:])):
        raise ValueError(f"{who}: features must go shallow to deep (non-decreasing strides), got {list(in_strides)}")


class DeclaresFeatures(ABC, nn.Module):
    """A module whose output is a list of feature maps that it declares: the base of every part.

    Encoders (:class:`segzoo.encoders.EncoderSpec`), bridges and decoders (:class:`FeaturePart`)
    declare the channels and strides of what they return, shallow to deep, so parts compose
    without guessing shapes (a test checks each declaration against real tensors).
    """

    @property
    @abstractmethod
    def out_channels(self) -> list[int]:
        """Channels of each output feature map, shallow to deep."""

    @property
    @abstractmethod
    def out_strides(self) -> list[int]:
        """Stride (input image size / feature size) of each output feature map, shallow to deep."""


class FeaturePart(DeclaresFeatures):
    """A module mapping a list of feature maps to another, declaring what it outputs.

    Args:
        in_channels: channels of the input features, shallow to deep.
        in_strides: strides (input image size / feature size) of the input features.

    Shapes: list of (B, in_channels[i], H / in_strides[i], W / in_strides[i])
    -> list of (B, out_channels[j], H / out_strides[j], W / out_strides[j]).
    """

    min_features: int = 1

    def __init__(self, in_channels: list[int], in_strides: list[int]) -> None:
        super().__init__()
        check_features(list(in_channels), list(in_strides), type(self).__name__, self.min_features)
        self.in_channels = [int(c) for c in in_channels]
        self.in_strides = [int(s) for s in in_strides]

    @abstractmethod
    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Map input features to output features."""
