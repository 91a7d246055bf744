"""The bridge contract: features in, features out, between encoder and decoder."""

from __future__ import annotations

from segzoo.parts import FeaturePart
from segzoo.registry import Registry

BRIDGES = Registry("bridge")
register_bridge = BRIDGES.register
create_bridge = BRIDGES.create
list_bridges = BRIDGES.names


class BridgeSpec(FeaturePart):
    """Base class of bridges: receives ``in_channels``/``in_strides`` from the encoder.

    Declare the outputs (``self.declare_outputs(channels, strides)`` in ``__init__``, or the
    ``out_channels`` / ``out_strides`` properties) and implement ``forward(features) -> features``.
    Shapes: list of (B, in_channels[i], H / in_strides[i], W / in_strides[i])
    -> list of (B, out_channels[j], H / out_strides[j], W / out_strides[j]).
    """
