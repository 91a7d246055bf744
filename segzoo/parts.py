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


class StoredDeclaration(DeclaresFeatures):
    """The declaration as data: :meth:`declare_outputs` in ``__init__`` stores the output channels and
    strides, and ``out_channels`` / ``out_strides`` return them (implemented once, here, for every
    :class:`FeaturePart`). A subclass may define the two properties itself instead (both, never one).
    """

    def _check_declaration_style(self) -> None:
        cls = type(self)
        own = [name for name in ("out_channels", "out_strides")
               if getattr(cls, name) is not getattr(StoredDeclaration, name)]
        if len(own) == 1:
            missing = ({"out_channels", "out_strides"} - set(own)).pop()
            raise TypeError(f"{cls.__name__} defines {own[0]} but not {missing}: define both, or neither and "
                            f"call self.declare_outputs(channels, strides) in __init__")

    def declare_outputs(self, channels: list[int], strides: list[int]) -> None:
        """Declare the channels and strides of the output features, shallow to deep (call it in ``__init__``).

        :attr:`out_channels` / :attr:`out_strides` then return them.

        Raises:
            ValueError: the two lists are empty or differ in length.
        """
        channels, strides = [int(c) for c in channels], [int(s) for s in strides]
        if not channels or len(channels) != len(strides):
            raise ValueError(f"{type(self).__name__} declares output channels {channels} and strides {strides}: "
                             f"one stride per output, at least one output")
        self._declared_outputs = (channels, strides)

    def _declared(self) -> tuple[list[int], list[int]]:
        declared = getattr(self, "_declared_outputs", None)
        if declared is None:
            raise TypeError(f"{type(self).__name__} does not declare its outputs: call "
                            f"self.declare_outputs(channels, strides) in __init__, or define the "
                            f"out_channels and out_strides properties")
        return declared

    @property
    def out_channels(self) -> list[int]:
        """Channels of each output feature map, shallow to deep (as declared by :meth:`declare_outputs`)."""
        return list(self._declared()[0])

    @property
    def out_strides(self) -> list[int]:
        """Stride of each output feature map, shallow to deep (as declared by :meth:`declare_outputs`)."""
        return list(self._declared()[1])


class FeaturePart(StoredDeclaration):
    """A module mapping a list of feature maps to another, declaring what it outputs.

    Args:
        in_channels: channels of the input features, shallow to deep.
        in_strides: strides (input image size / feature size) of the input features.

    Subclasses declare their outputs once, with :meth:`declare_outputs` in ``__init__``, or
    define the ``out_channels`` / ``out_strides`` properties themselves.

    Shapes: list of (B, in_channels[i], H / in_strides[i], W / in_strides[i])
    -> list of (B, out_channels[j], H / out_strides[j], W / out_strides[j]).

    Raises:
        TypeError: (at construction) a subclass defines one of the two properties without the other.
    """

    min_features: int = 1

    def __init__(self, in_channels: list[int], in_strides: list[int]) -> None:
        super().__init__()
        self._check_declaration_style()
        check_features(list(in_channels), list(in_strides), type(self).__name__, self.min_features)
        self.in_channels = [int(c) for c in in_channels]
        self.in_strides = [int(s) for s in in_strides]

    @abstractmethod
    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Map input features to output features."""
