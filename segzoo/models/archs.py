"""Building an architecture's parts from its row of the table (:mod:`segzoo.architectures`).

The rows themselves (:data:`ARCHITECTURES`, :class:`Architecture`) live in the torch-free
:mod:`segzoo.architectures` and are re-exported here; the bridge policy is described there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segzoo.architectures import ARCHITECTURES, Architecture
from segzoo.bridges import create_bridge
from segzoo.decoders import create_decoder
from segzoo.encoders import EncoderSpec
from segzoo.heads import create_head
from segzoo.parts import FeaturePart

__all__ = ["ARCHITECTURES", "Architecture", "part_params", "build_parts"]


def part_params(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """A copy of a ``*_params`` argument (``None`` -> ``{}``), or a TypeError naming it."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict or None, got {type(value).__name__}")
    return dict(value)


def build_parts(arch: Architecture, encoder: EncoderSpec, num_classes: int, *, family_bridge: bool,
                bridge_params: Mapping[str, Any] | None = None, decoder_params: Mapping[str, Any] | None = None,
                head_params: Mapping[str, Any] | None = None,
                decoder_defaults: Mapping[str, Any] | None = None) -> tuple[FeaturePart | None, FeaturePart, Any]:
    """Build the bridge (or ``None``), decoder and head of ``arch`` on top of ``encoder``, each once.

    Args:
        arch: the architecture row.
        encoder: the built encoder.
        num_classes: output channels of the head.
        family_bridge: whether the model family adds a bridge by default for this encoder (the generic
            family: only for its ``UnetEncoder``; see the bridge policy in :mod:`segzoo.architectures`).
        bridge_params: ``UnetBridge`` arguments; given -> a bridge is added.
        decoder_params: decoder arguments over ``arch.decoder_defaults`` and ``decoder_defaults``.
        head_params: head arguments over ``arch.head_defaults``.
        decoder_defaults: family-specific decoder defaults (e.g. symmetric widths).

    Returns:
        ``(bridge, decoder, head)``.
    """
    bridge = None
    if bridge_params is not None or (family_bridge and arch.bridge):
        bridge = create_bridge("unet", encoder.out_channels, encoder.out_strides,
                               **part_params(bridge_params, "bridge_params"))
    feats = bridge or encoder
    decoder = create_decoder(arch.decoder, feats.out_channels, feats.out_strides,
                             **{**arch.decoder_defaults, **(decoder_defaults or {}),
                                **part_params(decoder_params, "decoder_params")})
    head = create_head(arch.head, decoder.out_channels, num_classes, decoder.out_strides,
                       **{**arch.head_defaults, **part_params(head_params, "head_params")})
    return bridge, decoder, head
