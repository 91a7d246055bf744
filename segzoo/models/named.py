"""The named models: thin wiring of parts on top of :class:`UnetMetaSpec`.

Generic models (``Unet``, ``Linknet``, ``FPNUnet``, ``PSPnet``) use the plain
:class:`~segzoo.encoders.UnetEncoder` by default or any ``encoder=`` instance;
``Resnet*`` models use a torchvision ResNet encoder. All return logits
(B, num_classes, H, W) for inputs (B, in_channels, H, W) of any H, W.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from segzoo.bridges import UnetBridge
from segzoo.checkpoint import clean_state_dict
from segzoo.decoders import FPNDecoder, PSPDecoder, UNetDecoder
from segzoo.encoders import EncoderSpec, ResnetEncoder, UnetEncoder
from segzoo.encoders.resnet import RESNET_CHANNELS
from segzoo.encoders.weights import StateDictSource, load_into, read_state_dict
from segzoo.heads import FPNHead, UnetHead
from segzoo.models.meta import UnetMetaSpec
from segzoo.models.registry import register_model, set_model_spec

Params = dict[str, Any] | None

# decoder/head wiring per architecture: (decoder class, decoder defaults, head class, head defaults)
_ARCHS: dict[str, tuple[type, dict[str, Any], type, dict[str, Any]]] = {
    "unet": (UNetDecoder, {"block": "concat"}, UnetHead, {}),
    "linknet": (UNetDecoder, {"block": "sum"}, UnetHead, {}),
    "fpn_unet": (FPNDecoder, {}, FPNHead, {}),
    "pspnet": (PSPDecoder, {}, UnetHead, {}),
}


def _params(value: Params, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict or None, got {type(value).__name__}")
    return dict(value)


def _build(self: UnetMetaSpec, arch: str, encoder: EncoderSpec, num_classes: int, bridge_params: Params,
           use_bridge: bool, decoder_params: Params, head_params: Params, decoder_defaults: Params = None,
           meta: Params = None, state_dict: StateDictSource | None = None) -> None:
    decoder_cls, dec_defaults, head_cls, head_defaults = _ARCHS[arch]
    bridge = None
    if use_bridge:
        bridge = UnetBridge(encoder.out_channels, encoder.out_strides, **_params(bridge_params, "bridge_params"))
    feats = bridge or encoder
    decoder = decoder_cls(feats.out_channels, feats.out_strides,
                          **{**dec_defaults, **_params(decoder_defaults, ""), **_params(decoder_params, "decoder_params")})
    head = head_cls(decoder.out_channels, num_classes, decoder.out_strides,
                    **{**head_defaults, **_params(head_params, "head_params")})
    UnetMetaSpec.__init__(self, encoder, decoder, bridge=bridge, head=head, **_params(meta, "model options"))
    if state_dict is not None:
        load_into(self, clean_state_dict(read_state_dict(state_dict)), type(self).__name__)


class _GenericModel(UnetMetaSpec):
    """Shared constructor of the generic models (UnetEncoder by default, any EncoderSpec via ``encoder=``)."""

    arch = ""

    def __init__(self, num_classes: int = 1, in_channels: int = 3, num_channels: int = 32, num_blocks: int = 4,
                 encoder: EncoderSpec | None = None, encoder_params: Params = None, bridge_params: Params = None,
                 decoder_params: Params = None, head_params: Params = None, state_dict: StateDictSource | None = None,
                 size_mode: str = "pad", channels_last: bool = True) -> None:
        kwargs = dict(num_classes=num_classes, in_channels=in_channels, num_channels=num_channels,
                      num_blocks=num_blocks, encoder=encoder, encoder_params=encoder_params,
                      bridge_params=bridge_params, decoder_params=decoder_params, head_params=head_params,
                      state_dict=state_dict, size_mode=size_mode, channels_last=channels_last)
        nn.Module.__init__(self)
        if encoder is None:
            encoder = UnetEncoder(in_channels, num_channels, num_blocks, **_params(encoder_params, "encoder_params"))
        elif not isinstance(encoder, EncoderSpec):
            raise TypeError(f"encoder must be an EncoderSpec instance, got {type(encoder).__name__}")
        elif encoder_params:
            raise ValueError("pass either encoder= (an instance) or encoder_params=, not both")
        # PSP reads one feature map and needs no bridge; the others go one stage deeper
        use_bridge = self.arch != "pspnet"
        # a classic (symmetric) Unet: decoder widths equal the skip widths
        dec_defaults = {"channels": encoder.out_channels} if self.arch == "unet" else None
        _build(self, self.arch, encoder, num_classes, bridge_params, use_bridge, decoder_params, head_params,
               dec_defaults, {"size_mode": size_mode, "channels_last": channels_last}, state_dict)
        set_model_spec(self, self.arch, {k: v for k, v in kwargs.items() if v is not None})


class Unet(_GenericModel):
    """Classic Unet: UnetEncoder, UnetBridge, concat decoder, UnetHead.

    Args:
        num_classes: output channels (logits).
        in_channels: input image channels.
        num_channels: width of the first encoder stage (doubles per stage).
        num_blocks: encoder stages.
        encoder: an ``EncoderSpec`` instance replacing the default encoder.
        encoder_params: extra ``UnetEncoder`` arguments (e.g. ``complexity``).
        bridge_params: ``UnetBridge`` arguments.
        decoder_params: ``UNetDecoder`` arguments (``channels``, ``upsample``, ``complexity``, ``dropout``...).
        head_params: ``UnetHead`` arguments (``upsample="interpolate"|"conv"``, ``dropout``...).
        state_dict: path or dict of this whole model's weights, loaded after construction.
        size_mode: ``"pad"`` (any size) or ``"strict"`` (see :class:`UnetMetaSpec`).
        channels_last: run internally in channels_last (see :class:`UnetMetaSpec`).

    Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W).
    """

    arch = "unet"


class Linknet(_GenericModel):
    """Linknet: as :class:`Unet` but the decoder adds skips (sum blocks). Same arguments. Shapes as Unet."""

    arch = "linknet"


class FPNUnet(_GenericModel):
    """FPN: UnetEncoder, UnetBridge, FPNDecoder, FPNHead. Same arguments as :class:`Unet`. Shapes as Unet."""

    arch = "fpn_unet"


class PSPnet(_GenericModel):
    """PSPNet on the deepest UnetEncoder stage: PSPDecoder, UnetHead. Same arguments as :class:`Unet`."""

    arch = "pspnet"


class _ResnetModel(UnetMetaSpec):
    """Shared constructor of the ResNet models."""

    arch = ""

    def __init__(self, num_classes: int = 1, arch: str = "resnet18", pretrained: bool = True,
                 encoder_params: Params = None, bridge_params: Params = None, decoder_params: Params = None,
                 head_params: Params = None, state_dict: StateDictSource | None = None, size_mode: str = "pad",
                 channels_last: bool = True) -> None:
        kwargs = dict(num_classes=num_classes, pretrained=pretrained, encoder_params=encoder_params,
                      bridge_params=bridge_params, decoder_params=decoder_params, head_params=head_params,
                      state_dict=state_dict, size_mode=size_mode, channels_last=channels_last)
        nn.Module.__init__(self)
        enc_params = _params(encoder_params, "encoder_params")
        if self.arch == "pspnet":
            enc_params.setdefault("layers_indices", [2])  # PSP reads stride 8: layer3/layer4 are never built
        if "pretrained" in enc_params:
            raise ValueError("pass pretrained= to the model, not inside encoder_params")
        encoder = ResnetEncoder(arch=arch, pretrained=pretrained and enc_params.get("state_dict") is None,
                                **enc_params)
        _build(self, self.arch, encoder, num_classes, bridge_params, bridge_params is not None, decoder_params,
               head_params, None, {"size_mode": size_mode, "channels_last": channels_last}, state_dict)
        set_model_spec(self, f"{arch}_{self.arch}", {k: v for k, v in kwargs.items() if v is not None})


class ResnetUnet(_ResnetModel):
    """Unet on a torchvision ResNet: concat decoder to stride 2, logits upsampled bilinearly.

    Args:
        num_classes: output channels (logits).
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        pretrained: torchvision ImageNet weights for the encoder (hub cache first; offline without a
            cache: one clear error naming the cache path and ``encoder_params=dict(state_dict=...)``).
        encoder_params: extra ``ResnetEncoder`` arguments (``state_dict``, ``in_channels``,
            ``requires_grad``, ``layers_indices``).
        bridge_params: ``UnetBridge`` arguments; a bridge is added only when given.
        decoder_params: ``UNetDecoder`` arguments.
        head_params: ``UnetHead`` arguments.
        state_dict: path or dict of this whole model's weights, loaded after construction.
        size_mode: ``"pad"`` (any size) or ``"strict"``.
        channels_last: run internally in channels_last.

    Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W).

    Example:
        >>> model = ResnetUnet(num_classes=2, arch="resnet34", pretrained=False)
        >>> model(torch.rand(2, 3, 100, 75)).shape
        torch.Size([2, 2, 100, 75])
    """

    arch = "unet"


class ResnetLinknet(_ResnetModel):
    """Linknet on a torchvision ResNet (sum decoder, bilinear upsampling). Arguments as :class:`ResnetUnet`."""

    arch = "linknet"


class ResnetFPNUnet(_ResnetModel):
    """FPN on a torchvision ResNet (P2..P5, 128 channels). Arguments as :class:`ResnetUnet`."""

    arch = "fpn_unet"


class ResnetPSPnet(_ResnetModel):
    """PSPNet on a torchvision ResNet's stride-8 stage; layer3/layer4 are not built nor run.

    Arguments as :class:`ResnetUnet`.
    """

    arch = "pspnet"


GENERIC_MODELS = {"unet": Unet, "linknet": Linknet, "fpn_unet": FPNUnet, "pspnet": PSPnet}
RESNET_MODELS = {"unet": ResnetUnet, "linknet": ResnetLinknet, "fpn_unet": ResnetFPNUnet, "pspnet": ResnetPSPnet}

for _name, _cls in GENERIC_MODELS.items():
    register_model(_name, _cls)
for _resnet in RESNET_CHANNELS:
    for _name, _cls in RESNET_MODELS.items():
        register_model(f"{_resnet}_{_name}", _cls, arch=_resnet)
