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
from segzoo.encoders import EncoderSpec, UnetEncoder, ViTEncoder
from segzoo.heads import create_head
from segzoo.parts import FeaturePart

__all__ = ["ARCHITECTURES", "Architecture", "part_params", "build_parts", "check_encoder_fits", "default_encoder"]

ENCODER_KINDS = ("pyramid", "tokens")
#: the generic family's default ViT for a "tokens" row (no pretrained weights, as every generic default)
DEFAULT_VIT = "vit_small_patch16_224"


def part_params(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """A copy of a ``*_params`` argument (``None`` -> ``{}``), or a TypeError naming it."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict or None, got {type(value).__name__}")
    return dict(value)


def check_encoder_fits(arch: Architecture, encoder: EncoderSpec) -> None:
    """Refuse, in one line naming why and what fits, an encoder of the wrong kind for ``arch``.

    ``"tokens"`` rows (DPT) need token maps at one stride (a plain ViT); ``"pyramid"`` rows need features at
    several strides: several maps at one stride (a ViT) are refused there. One feature map passes (PSP
    reads one).

    Raises:
        ValueError: the encoder cannot serve the architecture.
    """
    if arch.encoder_kind not in ENCODER_KINDS:
        raise ValueError(f"Architecture.encoder_kind must be one of {ENCODER_KINDS}, got {arch.encoder_kind!r}")
    strides = [int(s) for s in encoder.out_strides]
    one_stride = len(set(strides)) == 1
    name = arch.generic_class or arch.decoder
    who = type(encoder).__name__
    if arch.encoder_kind == "tokens" and not one_stride:
        raise ValueError(f"{name} needs a plain ViT encoder (one stride, e.g. TimmEncoder('{DEFAULT_VIT}')); "
                         f"{who} has strides {strides}")
    if arch.encoder_kind == "pyramid" and one_stride and len(strides) > 1:
        raise ValueError(f"{name} needs a multi-scale encoder (features at several strides, e.g. ResnetEncoder "
                         f"or TimmEncoder('resnet34')); {who} has one stride {strides}; use DPT for a plain ViT")


def default_encoder(arch: Architecture, in_channels: int, num_channels: int, num_blocks: int,
                    encoder_params: Mapping[str, Any] | None) -> EncoderSpec:
    """The generic family's encoder when none is given: a UnetEncoder, or for a ``"tokens"`` row a
    :class:`~segzoo.encoders.ViTEncoder` (``encoder_params`` are its arguments, ``name`` the timm ViT).

    Raises:
        ValueError: ``num_channels`` / ``num_blocks`` changed for a ViT default (they shape a UnetEncoder).
    """
    params = part_params(encoder_params, "encoder_params")
    if arch.encoder_kind != "tokens":
        return UnetEncoder(in_channels, num_channels, num_blocks, **params)
    if (num_channels, num_blocks) != (32, 4):
        raise ValueError(f"{arch.generic_class or arch.decoder}'s default encoder is a ViT: num_channels and "
                         f"num_blocks do not apply; pass encoder_params=dict(name='{DEFAULT_VIT}', ...) or encoder=")
    return ViTEncoder(**{"name": DEFAULT_VIT, "in_channels": in_channels, **params})


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
    check_encoder_fits(arch, encoder)
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
