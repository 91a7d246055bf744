"""Building an architecture's parts from its row of the table (:mod:`segzoo.architectures`).

The rows themselves (:data:`ARCHITECTURES`, :class:`Architecture`) live in the torch-free
:mod:`segzoo.architectures` and are re-exported here; the bridge policy is described there.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from segzoo.architectures import ARCHITECTURES, Architecture
from segzoo.bridges import create_bridge
from segzoo.decoders import create_decoder
from segzoo.encoders import ENCODERS, EncoderSpec, UnetEncoder, ViTEncoder, create_encoder
from segzoo.errors import NotFoundError, short_repr, unknown_name_error
from segzoo.heads import create_head
from segzoo.parts import FeaturePart

__all__ = ["ARCHITECTURES", "Architecture", "part_params", "build_parts", "check_encoder_fits", "default_encoder",
           "model_encoder"]

ENCODER_KINDS = ("pyramid", "tokens", "any")
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
    several strides: several maps at one stride (a ViT) are refused there; one feature map passes.
    ``"any"`` rows (PSP, which reads one feature map) take every encoder.

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


def _encoder_name_and_params(encoder: str | Mapping[str, Any], encoder_params: Mapping[str, Any] | None
                             ) -> tuple[str, dict[str, Any]]:
    """``encoder=`` given as a registered name (arguments in ``encoder_params``) or ``{"name", "params"}``."""
    if isinstance(encoder, str):
        return encoder, part_params(encoder_params, "encoder_params")
    if not isinstance(encoder, Mapping):
        raise TypeError(f"encoder must be an EncoderSpec instance, a registered encoder name (segzoo.encoders."
                        f"list_encoders()) or a dict {{'name': ..., 'params': {{...}}}}, got {type(encoder).__name__}")
    extra = sorted(str(k) for k in encoder if k not in ("name", "params"))
    if extra or not isinstance(encoder.get("name"), str):
        raise ValueError(f"encoder as a dict takes the keys 'name' (a registered encoder, e.g. 'timm') and 'params' "
                         f"(its arguments, e.g. {{'name': 'resnet18'}}), got the keys {sorted(map(str, encoder))}"
                         + (f" (name {short_repr(encoder.get('name'))})" if not extra else ""))
    if encoder_params:
        raise ValueError("pass the encoder's arguments in encoder['params'], not also in encoder_params")
    return encoder["name"], part_params(encoder.get("params"), "encoder['params']")


def _unknown_encoder(name: str) -> NotFoundError:
    """The unknown-name error, pointing a timm model name (``"resnet18"``) at the ``"timm"`` encoder."""
    error = unknown_name_error("encoder", name, ENCODERS)
    try:
        import timm
        known = timm.is_model(name.partition(".")[0])
    except (ImportError, RuntimeError):
        known = False
    if known:
        return NotFoundError(f"{error}; for the timm model {name!r} pass encoder={{'name': 'timm', 'params': "
                             f"{{'name': {name!r}}}}}")
    return error


def model_encoder(arch: Architecture, encoder: EncoderSpec | str | Mapping[str, Any] | None, in_channels: int,
                  num_channels: int, num_blocks: int, encoder_params: Mapping[str, Any] | None) -> EncoderSpec:
    """The generic family's encoder from its ``encoder=`` argument.

    Args:
        arch: the architecture row (its default encoder when ``encoder`` is ``None``).
        encoder: ``None`` (:func:`default_encoder`), an :class:`EncoderSpec` instance (used as is), a registered
            encoder name (``"mit_b0"``, ``"timm"``; ``segzoo.encoders.list_encoders()``) built with
            ``encoder_params``, or ``{"name": registered name, "params": {...}}``
            (``{"name": "timm", "params": {"name": "resnet18"}}``). A named encoder takes the model's
            ``in_channels`` unless its params set it.
        in_channels: the model's input channels.
        num_channels: the default UnetEncoder's width (does not apply to a named encoder).
        num_blocks: the default UnetEncoder's depth (does not apply to a named encoder).
        encoder_params: the default encoder's or the named encoder's arguments.

    Raises:
        NotFoundError: an unknown encoder name (a KeyError; one line with close matches).
        TypeError: an ``encoder`` of another type, or arguments the encoder does not take.
        ValueError: ``encoder_params`` with an instance or a dict, a malformed dict, an ``in_channels`` that
            disagrees with the model's, ``num_channels`` / ``num_blocks`` with a named encoder.
    """
    if encoder is None:
        return default_encoder(arch, in_channels, num_channels, num_blocks, encoder_params)
    if isinstance(encoder, EncoderSpec):
        if encoder_params:
            raise ValueError("pass either encoder= (an instance) or encoder_params=, not both")
        return encoder
    name, params = _encoder_name_and_params(encoder, encoder_params)
    if name not in ENCODERS:
        raise _unknown_encoder(name)
    if (num_channels, num_blocks) != (32, 4):
        raise ValueError(f"num_channels and num_blocks shape the default UnetEncoder; encoder {name!r} takes its own "
                         f"arguments (encoder={{'name': {name!r}, 'params': {{...}}}})")
    fixed_by_name = ENCODERS.defaults(name)
    fixed = sorted(set(fixed_by_name) & set(params))
    if fixed:
        raise ValueError(f"encoder {name!r} fixes {fixed} by its name; remove them from its params")
    factory = ENCODERS[name]
    if isinstance(factory, type):  # a class: its __init__ says what it needs (TimmEncoder's __new__ defaults all)
        accepted = dict(list(inspect.signature(factory.__init__).parameters.items())[1:])
    else:
        accepted = dict(inspect.signature(factory).parameters)
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise TypeError(f"encoder {name!r} got unknown argument(s) {unknown}; valid: "
                            f"{sorted(set(accepted) - set(fixed_by_name))}")
    missing = [n for n, p in accepted.items() if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
               p.KEYWORD_ONLY) and n not in params and n not in fixed_by_name and n != "in_channels"]
    if missing:
        raise TypeError(f"encoder {name!r} needs the argument(s) {missing} in its params, e.g. "
                        f"{{'name': {name!r}, 'params': {{{missing[0]!r}: ...}}}}")
    if "in_channels" in accepted:
        if in_channels != 3 and params.get("in_channels", in_channels) != in_channels:
            raise ValueError(f"in_channels={in_channels!r} but the encoder's params set in_channels="
                             f"{params['in_channels']!r}; state it once")
        params.setdefault("in_channels", in_channels)
    return create_encoder(name, **params)


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
