"""The decoder contract."""

from __future__ import annotations

from segzoo.parts import FeaturePart
from segzoo.registry import Registry

DECODERS = Registry("decoder")
register_decoder = DECODERS.register
create_decoder = DECODERS.create
list_decoders = DECODERS.names


class DecoderSpec(FeaturePart):
    """Base class of decoders: receives ``in_channels``/``in_strides`` (encoder or bridge output).

    Declare the outputs (``self.declare_outputs(channels, strides)`` in ``__init__``, or the
    ``out_channels`` / ``out_strides`` properties) and implement ``forward(features) -> features``
    (outputs shallow to deep; heads usually read the first, finest one).
    Shapes: list of (B, in_channels[i], H / in_strides[i], W / in_strides[i])
    -> list of (B, out_channels[j], H / out_strides[j], W / out_strides[j]).
    """


def stride_ratio(deep: int, shallow: int, who: str) -> int:
    """Integer upsampling factor between two feature strides, or a ValueError."""
    if deep % shallow:
        raise ValueError(f"{who}: stride {deep} is not a multiple of stride {shallow}")
    return deep // shallow


def check_positive_int(value: object, name: str, who: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``who``'s argument ``name`` (bools are refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{who}: {name} must be an int >= 1, got {value!r}")
    return value
