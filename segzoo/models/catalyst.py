"""Catalyst 19.x's legacy segmentation models, on segzoo's parts.

Catalyst 19.x exported ``MobileUnet`` (a Unet on MobileNetV2), ``ResNetUnet`` and
``ResNetLinknet`` next to its spec-based models. Here:

- :class:`MobileUnet` is torchvision's MobileNetV2 (:class:`~segzoo.encoders.MobileNetV2Encoder`)
  under segzoo's Unet decoder and head, registered as ``mobilenetv2_unet``;
- :class:`ResNetUnet` is :class:`~segzoo.models.ResnetUnet` taking Catalyst's constructor
  (``num_channels`` second); :data:`ResNetLinknet` is :class:`~segzoo.models.ResnetLinknet`
  itself (the constructors agree).

Both keep Catalyst's keyword and positional spellings; what cannot be honoured raises, naming
the replacement.
"""

from __future__ import annotations

import numbers
from typing import Any

from segzoo.architectures import CATALYST_MODELS
from segzoo.encoders.mobilenet import MobileNetV2Encoder
from segzoo.encoders.weights import StateDictSource
from segzoo.models.archs import ARCHITECTURES, build_parts, part_params
from segzoo.models.meta import UnetMetaSpec
from segzoo.models.named import ResnetLinknet, ResnetUnet, _finish
from segzoo.models.registry import register_model

Params = dict[str, Any] | None
_MOBILE_UNET = CATALYST_MODELS["MobileUnet"]  # its registry name ("mobilenetv2_unet")


def _check_pretrained(pretrained: Any, what: str) -> bool:
    """Catalyst 19.x's ``pretrained=None`` means no weights; segzoo takes a bool (or that ``None``)."""
    if pretrained is None or isinstance(pretrained, bool):
        return bool(pretrained)
    raise TypeError(f"{what}(pretrained={pretrained!r}): pass pretrained=True for torchvision's ImageNet "
                    f"weights, or False / None for none")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


class MobileUnet(UnetMetaSpec):
    """Unet on torchvision's MobileNetV2 (Catalyst 19.x's ``MobileUnet``), any H x W in.

    Encoder: :class:`~segzoo.encoders.MobileNetV2Encoder` (features at strides 2..32); decoder:
    segzoo's concat :class:`~segzoo.decoders.UNetDecoder` whose blocks keep the skips' widths (16,
    24, 32, 96 for ``width_mult=1``, as Catalyst's decoder did); head: :class:`~segzoo.heads.UnetHead`
    (logits at stride 2, upsampled bilinearly). Catalyst's transposed convolutions and its
    3-channel bottleneck before the classifier are not reproduced, so Catalyst's weights do not load.

    Args:
        num_classes: output channels (logits).
        input_size: Catalyst's argument: it only sized the pooling of MobileNetV2's classifier, which
            MobileUnet does not use, so it changes nothing here; it must be a multiple of 32, as
            Catalyst required. Inputs of any H x W work.
        width_mult: MobileNetV2 channel multiplier.
        pretrained: torchvision's ImageNet weights for the encoder (``width_mult=1.0``; hub cache first,
            offline without a cache one error naming the cache path and
            ``encoder_params=dict(state_dict=...)``). ``None`` (Catalyst's default) means ``False``.
            Catalyst's own 0.5 / 0.25 width files are not available: pass their weights with
            ``encoder_params=dict(state_dict=...)`` in torchvision's key format.
        encoder_params: extra :class:`~segzoo.encoders.MobileNetV2Encoder` arguments (``state_dict``,
            ``in_channels``, ``requires_grad``).
        bridge_params: ``UnetBridge`` arguments; a bridge is added only when given.
        decoder_params: :class:`~segzoo.decoders.UNetDecoder` arguments (e.g. ``channels``, ``upsample``).
        head_params: :class:`~segzoo.heads.UnetHead` arguments.
        state_dict: path or dict of this whole model's weights, loaded after construction.
        size_mode: ``"pad"`` (any size) or ``"strict"`` (see :class:`UnetMetaSpec`).
        channels_last: ``"auto"``, ``True`` or ``False`` (see :class:`UnetMetaSpec`).

    Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W).

    Example:
        >>> model = MobileUnet(num_classes=2)
        >>> model(torch.rand(1, 3, 100, 75)).shape
        torch.Size([1, 2, 100, 75])
    """

    def __init__(self, num_classes: int = 1, input_size: int = 224, width_mult: float = 1.0,
                 pretrained: bool | None = False, encoder_params: Params = None, bridge_params: Params = None,
                 decoder_params: Params = None, head_params: Params = None,
                 state_dict: StateDictSource | None = None, *, size_mode: str = "pad",
                 channels_last: bool | str = "auto") -> None:
        pretrained = _check_pretrained(pretrained, "MobileUnet")
        if _positive_int(input_size, "MobileUnet input_size") % 32:
            raise ValueError(f"MobileUnet input_size must be a multiple of 32 (as in Catalyst), got {input_size!r}; "
                             f"it does not limit the input size: any H x W works")
        given = dict(num_classes=num_classes, input_size=input_size, width_mult=width_mult, pretrained=pretrained,
                     encoder_params=encoder_params, bridge_params=bridge_params, decoder_params=decoder_params,
                     head_params=head_params, state_dict=state_dict, size_mode=size_mode,
                     channels_last=channels_last)
        enc_params = part_params(encoder_params, "encoder_params")
        for key in ("pretrained", "width_mult"):
            if key in enc_params:
                raise ValueError(f"pass {key}= to MobileUnet, not inside encoder_params")
        encoder = MobileNetV2Encoder(width_mult=width_mult, pretrained=pretrained and enc_params.get("state_dict") is None,
                                     **enc_params)
        # symmetric widths: each decoder block keeps its skip's channels (a bridge makes every encoder level a skip)
        skips = encoder.out_channels if bridge_params is not None else encoder.out_channels[:-1]
        bridge, decoder, head = build_parts(ARCHITECTURES["unet"], encoder, num_classes, family_bridge=False,
                                            bridge_params=bridge_params, decoder_params=decoder_params,
                                            head_params=head_params, decoder_defaults={"channels": skips})
        super().__init__(encoder, decoder, bridge=bridge, head=head, size_mode=size_mode, channels_last=channels_last)
        _finish(self, _MOBILE_UNET, given, state_dict)


class ResNetUnet(ResnetUnet):
    """Catalyst 19.x's ``ResNetUnet(num_classes=1, num_channels=32, arch="resnet18", pretrained=True)``:
    :class:`~segzoo.models.ResnetUnet` with Catalyst's argument order.

    Catalyst's ResNetUnet (AlbuNet) had its own decoder; segzoo builds its ResnetUnet, whose
    checkpoints and registry name (``resnet18_unet``, ...) it shares, so Catalyst's weights do not load.

    Args:
        num_classes: output channels (logits).
        num_channels: width of the finest decoder block, doubled per level (``decoder_params=dict(
            channels=[n, 2n, 4n, 8n])``); ``None``: ResnetUnet's default, which is ``num_channels=32``.
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        pretrained: torchvision ImageNet weights for the encoder.
        encoder_params, bridge_params, decoder_params, head_params, state_dict, size_mode, channels_last:
            as :class:`~segzoo.models.ResnetModel`.

    Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W).
    """

    def __init__(self, num_classes: int = 1, num_channels: int | None = None, arch: str = "resnet18",
                 pretrained: bool = True, encoder_params: Params = None, bridge_params: Params = None,
                 decoder_params: Params = None, head_params: Params = None, state_dict: StateDictSource | None = None,
                 *, size_mode: str = "pad", channels_last: bool | str = "auto") -> None:
        pretrained = _check_pretrained(pretrained, "ResNetUnet")
        if num_channels is not None:
            n = _positive_int(num_channels, "ResNetUnet num_channels (Catalyst's order: num_classes, num_channels, "
                                            "arch, pretrained)")
            decoder_params = part_params(decoder_params, "decoder_params")
            if "channels" in decoder_params:
                raise ValueError("ResNetUnet: pass num_channels= or decoder_params['channels'], not both")
            decoder_params["channels"] = [n, 2 * n, 4 * n, 8 * n]
        super().__init__(num_classes, arch, pretrained, encoder_params, bridge_params, decoder_params, head_params,
                         state_dict, size_mode=size_mode, channels_last=channels_last)


#: Catalyst 19.x's ``ResNetLinknet(num_classes=1, arch="resnet18", pretrained=True)`` is segzoo's ResnetLinknet
ResNetLinknet = ResnetLinknet

register_model(_MOBILE_UNET, MobileUnet)
