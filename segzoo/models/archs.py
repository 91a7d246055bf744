"""Architectures as table data: which decoder and head each one wires, with which defaults.

A new architecture is a decoder (and, if needed, head) file registered in
:mod:`segzoo.decoders` / :mod:`segzoo.heads` plus one row of :data:`ARCHITECTURES`; the
registry then lists it as ``{name}`` (generic encoder) and ``resnet*_{name}``.

Bridge policy (the same for every architecture and encoder):

- ``bridge_params`` given (a dict, even empty): a :class:`~segzoo.bridges.UnetBridge` with those
  arguments is added.
- not given: a bridge is added when both the architecture (``Architecture.bridge``) and the
  model family ask for one. The generic family does (its UnetEncoder, like Catalyst's Unet,
  stops one stage early and the bridge is its deepest stage); the ResNet family does not
  (a ResNet already reaches stride 32). PSP reads one feature map and asks for none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segzoo.bridges import create_bridge
from segzoo.decoders import create_decoder
from segzoo.encoders import EncoderSpec
from segzoo.heads import create_head
from segzoo.parts import FeaturePart


@dataclass(frozen=True)
class Architecture:
    """One architecture as data.

    Attributes:
        decoder: decoder registry name (``segzoo.decoders.list_decoders()``).
        head: head registry name (``segzoo.heads.list_heads()``).
        decoder_defaults: decoder keyword defaults (``decoder_params`` override them).
        head_defaults: head keyword defaults (``head_params`` override them).
        bridge: whether this architecture takes the family's default bridge (see the module docstring).
        symmetric: generic family only: decoder ``channels`` default to the encoder's widths
            (the classic symmetric Unet; 7,849,634 parameters for ``Unet(num_classes=2)``, as Catalyst's).
        resnet_encoder: ``ResnetEncoder`` keyword defaults (``encoder_params`` override them).
        title: a short description, shown by the named classes' docstrings and ``segzoo models``.
    """

    decoder: str
    head: str = "unet"
    decoder_defaults: Mapping[str, Any] = field(default_factory=dict)
    head_defaults: Mapping[str, Any] = field(default_factory=dict)
    bridge: bool = True
    symmetric: bool = False
    resnet_encoder: Mapping[str, Any] = field(default_factory=dict)
    title: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture("unet", decoder_defaults={"block": "concat"}, symmetric=True,
                         title="Unet: concat skip decoder"),
    "linknet": Architecture("unet", decoder_defaults={"block": "sum"}, title="Linknet: sum skip decoder"),
    "fpn_unet": Architecture("fpn", head="fpn", title="FPN: feature pyramid, per-level head branches"),
    # PSP reads stride 8 only: the ResNet's layer3/layer4 are neither built nor run
    "pspnet": Architecture("psp", bridge=False, resnet_encoder={"layers_indices": [2]},
                           title="PSPNet: pyramid pooling on one feature"),
    "deeplabv3plus": Architecture("deeplabv3plus", resnet_encoder={"output_stride": 16},
                                  title="DeepLabV3+: ASPP at stride 16 (dilated), stride-4 skip"),
    "upernet": Architecture("upernet", title="UPerNet: PPM + FPN, levels fused at the finest stride"),
}


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
        family_bridge: whether the model family adds a bridge by default (see the module docstring).
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
