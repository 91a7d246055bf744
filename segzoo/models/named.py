"""The named models: two model families times the rows of :data:`~segzoo.architectures.ARCHITECTURES`.

Generic models (``Unet``, ``Linknet``, ``FPNUnet``, ``PSPnet``, ``DeepLabV3Plus``, ``UPerNet``) use the
plain :class:`~segzoo.encoders.UnetEncoder` by default or any ``encoder=`` instance; ``Resnet*``
models use a torchvision ResNet encoder. All return logits (B, num_classes, H, W) for inputs
(B, in_channels, H, W) of any H, W. Each class only names its architecture row; the family
constructor builds every part once and hands them to :class:`UnetMetaSpec`.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, ClassVar

from segzoo.architectures import RESNET_ENCODERS, model_classes
from segzoo.checkpoint import clean_state_dict
from segzoo.encoders import EncoderSpec, ResnetEncoder, UnetEncoder
from segzoo.encoders.base import encoder_rebuild_spec
from segzoo.encoders.weights import StateDictSource, load_into, read_state_dict
from segzoo.errors import CheckpointError
from segzoo.models.archs import ARCHITECTURES, build_parts, model_encoder, part_params
from segzoo.models.meta import UnetMetaSpec
from segzoo.models.registry import register_model, set_model_spec

Params = dict[str, Any] | None


def _torchvision_resnet_keys(state_dict: dict[str, Any]) -> bool:
    """Whether a state dict is in torchvision's ResNet format (an encoder's weights, not a whole model's)."""
    return "conv1.weight" in state_dict and any(k.startswith("layer1.") for k in state_dict) \
        and not any(k.startswith("encoder.") for k in state_dict)


def _whole_model_weights(state_dict: StateDictSource, model: str) -> dict[str, Any]:
    """Read a Resnet* model's ``state_dict=``, refusing torchvision encoder weights with the call that loads them.

    Raises:
        CheckpointError: the weights are a torchvision ResNet's (they belong in ``encoder_params``).
    """
    weights = clean_state_dict(read_state_dict(state_dict))
    if _torchvision_resnet_keys(weights):
        shown = repr(os.fspath(state_dict)) if isinstance(state_dict, (str, os.PathLike)) else "your_dict"
        raise CheckpointError(
            f"state_dict={shown} holds torchvision ResNet weights (an encoder's), not a whole {model}'s: pass "
            f"encoder_params=dict(state_dict={shown}) instead (state_dict= takes a whole model's weights, "
            f"e.g. a saved model.state_dict() or a segzoo checkpoint)")
    return weights


def _finish(model: UnetMetaSpec, name: str, given: dict[str, Any], state_dict: StateDictSource | None) -> None:
    """Load whole-model weights, then record the spec: the registry name and the non-default arguments."""
    if state_dict is not None:
        load_into(model, clean_state_dict(read_state_dict(state_dict)), type(model).__name__)
    params = inspect.signature(type(model).__init__).parameters
    # a subclass may not take every argument (Catalyst's ResNetUnet has no aux_params): its default is None
    set_model_spec(model, name, {k: v for k, v in given.items()
                                 if not _is_default(v, params[k].default if k in params else None)})


def dilate_encoder(encoder: EncoderSpec, output_stride: int) -> EncoderSpec:
    """``encoder`` with its deepest features at ``output_stride`` (``encoder_output_stride`` of the generic models).

    An encoder already there is returned as is; one with a ``dilated(output_stride)`` method
    (:meth:`TimmEncoder.dilated <segzoo.encoders.TimmEncoder.dilated>`: timm's CNNs) is dilated with its weights.

    Raises:
        ValueError: not 8, 16 or 32, or an encoder that cannot reach it (one line naming its deepest stride).
    """
    if isinstance(output_stride, bool) or output_stride not in (8, 16, 32):
        raise ValueError(f"encoder_output_stride must be 8, 16 or 32, got {output_stride!r}")
    deepest = max(encoder.out_strides)
    if deepest == output_stride:
        return encoder
    if callable(getattr(encoder, "dilated", None)):
        return encoder.dilated(output_stride)
    raise ValueError(f"{type(encoder).__name__} cannot dilate to output stride {output_stride} (its deepest stride "
                     f"is {deepest}): pass an encoder built for it, e.g. TimmEncoder(name, output_stride="
                     f"{output_stride}), or leave encoder_output_stride unset")


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and isinstance(value, (bool, int, float, str))
                                and value == default)


class GenericModel(UnetMetaSpec):
    """The generic family: UnetEncoder by default, any :class:`EncoderSpec` via ``encoder=``.

    Args:
        num_classes: output channels (logits).
        in_channels: input image channels.
        num_channels: width of the first encoder stage (doubles per stage).
        num_blocks: encoder stages.
        encoder: replaces the default encoder: an ``EncoderSpec`` instance, a registered encoder name
            (``"mit_b0"``, ``"timm"``...: ``segzoo.encoders.list_encoders()``; its arguments in ``encoder_params``)
            or ``{"name": ..., "params": {...}}`` (``{"name": "timm", "params": {"name": "resnet18"}}``); a named
            encoder takes the model's ``in_channels`` (see :func:`~segzoo.models.archs.model_encoder`). An
            instance of segzoo's encoder classes is recorded as data in the model's spec
            (:attr:`EncoderSpec.encoder_spec`), so its checkpoints rebuild without a factory.
        encoder_params: extra ``UnetEncoder`` arguments (e.g. ``complexity``); for DPT, ``ViTEncoder``'s
            (``name``: the timm ViT, default ``"vit_small_patch16_224"``; ``num_channels``/``num_blocks`` do not apply);
            with ``encoder=`` a name, that encoder's arguments.
        bridge_params: ``UnetBridge`` arguments; not given, a bridge is added only to the default
            ``UnetEncoder`` (see the bridge policy in :mod:`segzoo.architectures`): ``encoder=`` gets none.
        decoder_params: arguments of the architecture's decoder.
        head_params: arguments of the architecture's head (``upsample``, ``dropout``...).
        state_dict: path or dict of this whole model's weights, loaded after construction.
        size_mode: ``"pad"`` (any size) or ``"strict"`` (see :class:`UnetMetaSpec`).
        channels_last: ``"auto"`` (the layout measured fastest here, per pass), ``True`` or ``False``
            (see :class:`UnetMetaSpec`).
        encoder_output_stride: ``8``, ``16`` or ``32``: the encoder's deepest stride, dilating an encoder
            that can (:func:`dilate_encoder`: a ``TimmEncoder`` of a CNN, weights kept), e.g. 16 for
            DeepLabV3+ as smp; ``None`` (default): the encoder's own strides.
        aux_params: ``dict(classes=K, pooling="avg", dropout=0.0, activation=None)``: a classification head on
            the deepest features (see :class:`UnetMetaSpec`); the model then returns ``(logits, labels (B, K))``.

    Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W) (with ``aux_params``: and (B, K)).
    """

    architecture: ClassVar[str] = ""

    def __init__(self, num_classes: int = 1, in_channels: int = 3, num_channels: int = 32, num_blocks: int = 4,
                 encoder: EncoderSpec | str | dict[str, Any] | None = None, encoder_params: Params = None, bridge_params: Params = None,
                 decoder_params: Params = None, head_params: Params = None, *,
                 state_dict: StateDictSource | None = None, size_mode: str = "pad", channels_last: bool | str = "auto",
                 encoder_output_stride: int | None = None, aux_params: Params = None) -> None:
        given = dict(aux_params=aux_params, num_classes=num_classes, in_channels=in_channels, num_channels=num_channels,
                     num_blocks=num_blocks, encoder=encoder, encoder_params=encoder_params,
                     bridge_params=bridge_params, decoder_params=decoder_params, head_params=head_params,
                     state_dict=state_dict, size_mode=size_mode, channels_last=channels_last,
                     encoder_output_stride=encoder_output_stride)
        arch = ARCHITECTURES[self.architecture]
        if isinstance(encoder, EncoderSpec) and (spec := encoder_rebuild_spec(encoder)) is not None:
            # segzoo's encoder classes record their arguments: the model's spec holds the encoder as data (its
            # in_channels inside), so load_model / export rebuild it without a factory
            given.update(encoder=spec, in_channels=3, num_channels=32, num_blocks=4)
        encoder = model_encoder(arch, encoder, in_channels, num_channels, num_blocks, encoder_params)
        if encoder_output_stride is not None:
            encoder = dilate_encoder(encoder, encoder_output_stride)
        # the from-scratch design (a bridge, decoder widths mirroring the encoder's) is the UnetEncoder's
        # default; any other encoder gets it only with bridge_params (which rebuilds a model saved before
        # this policy), otherwise no layer it did not ask for and the decoder's default widths (as smp)
        classic = isinstance(encoder, UnetEncoder)
        bridge, decoder, head = build_parts(
            arch, encoder, num_classes, family_bridge=classic, bridge_params=bridge_params,
            decoder_params=decoder_params, head_params=head_params,
            decoder_defaults={"channels": encoder.out_channels}
            if arch.symmetric and (classic or bridge_params is not None) else None)
        super().__init__(encoder, decoder, bridge=bridge, head=head, size_mode=size_mode, channels_last=channels_last,
                         aux_params=aux_params)
        _finish(self, self.architecture, given, state_dict)


class ResnetModel(UnetMetaSpec):
    """The ResNet family: a torchvision ResNet encoder (resnet18/34/50/101/152).

    Args:
        num_classes: output channels (logits).
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        pretrained: torchvision ImageNet weights for the encoder (hub cache first; offline without a
            cache: one clear error naming the cache path and ``encoder_params=dict(state_dict=...)``).
        encoder_params: extra ``ResnetEncoder`` arguments (``state_dict``, ``in_channels``,
            ``requires_grad``, ``layers_indices``, ``output_stride``) over the architecture's defaults.
        bridge_params: ``UnetBridge`` arguments; a bridge is added only when given.
        decoder_params: arguments of the architecture's decoder.
        head_params: arguments of the architecture's head.
        state_dict: path or dict of this whole model's weights, loaded after construction (the
            encoder's ImageNet weights are then not fetched: they would be overwritten). A torchvision
            ResNet file is refused with the call that loads it: ``encoder_params=dict(state_dict=...)``.
        size_mode: ``"pad"`` (any size) or ``"strict"``.
        channels_last: ``"auto"``, ``True`` or ``False`` (see :class:`UnetMetaSpec`).
        aux_params: ``dict(classes=K, pooling="avg", dropout=0.0, activation=None)``: a classification head on
            the deepest features (see :class:`UnetMetaSpec`); the model then returns ``(logits, labels (B, K))``.

    Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W) (with ``aux_params``: and (B, K)).
    """

    architecture: ClassVar[str] = ""

    def __init__(self, num_classes: int = 1, arch: str = "resnet18", pretrained: bool = True,
                 encoder_params: Params = None, bridge_params: Params = None, decoder_params: Params = None,
                 head_params: Params = None, state_dict: StateDictSource | None = None, *, size_mode: str = "pad",
                 channels_last: bool | str = "auto", aux_params: Params = None) -> None:
        given = dict(aux_params=aux_params, num_classes=num_classes, pretrained=pretrained, encoder_params=encoder_params,
                     bridge_params=bridge_params, decoder_params=decoder_params, head_params=head_params,
                     state_dict=state_dict, size_mode=size_mode, channels_last=channels_last)
        row = ARCHITECTURES[self.architecture]
        enc_params = {**row.resnet_encoder, **part_params(encoder_params, "encoder_params")}
        if "pretrained" in enc_params:
            raise ValueError("pass pretrained= to the model, not inside encoder_params")
        if state_dict is not None:  # read (and checked) first; the encoder's ImageNet weights would be overwritten
            state_dict = _whole_model_weights(state_dict, type(self).__name__)
            if "requires_grad" in enc_params and enc_params["requires_grad"] is None:
                enc_params["requires_grad"] = not pretrained  # what None means, without fetching the weights
        encoder = ResnetEncoder(arch=arch, pretrained=pretrained and state_dict is None
                                and enc_params.get("state_dict") is None, **enc_params)
        bridge, decoder, head = build_parts(row, encoder, num_classes, family_bridge=False,
                                            bridge_params=bridge_params, decoder_params=decoder_params,
                                            head_params=head_params)
        super().__init__(encoder, decoder, bridge=bridge, head=head, size_mode=size_mode, channels_last=channels_last,
                         aux_params=aux_params)
        _finish(self, f"{arch}_{self.architecture}", given, state_dict)


class Unet(GenericModel):
    """Classic Unet: UnetEncoder, UnetBridge, concat decoder with the encoder's widths, UnetHead
    (with ``encoder=``: that encoder, no bridge unless ``bridge_params`` is given).

    Arguments as :class:`GenericModel`. Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W).
    """

    architecture = "unet"


class Linknet(GenericModel):
    """Linknet: as :class:`Unet` but the decoder adds skips (sum blocks). Arguments as :class:`GenericModel`."""

    architecture = "linknet"


class FPNUnet(GenericModel):
    """FPN: UnetEncoder, UnetBridge, FPNDecoder, FPNHead. Arguments as :class:`GenericModel`."""

    architecture = "fpn_unet"


class PSPnet(GenericModel):
    """PSPNet on the deepest UnetEncoder stage: PSPDecoder, UnetHead. Arguments as :class:`GenericModel`."""

    architecture = "pspnet"


class DeepLabV3Plus(GenericModel):
    """DeepLabV3+: ASPP on the deepest feature (the bridge's, stride 16 by default), fused with the stride-4
    skip (:class:`~segzoo.decoders.DeepLabV3PlusDecoder`), logits upsampled bilinearly.

    With another encoder (``encoder=TimmEncoder(...)``, a custom one) ASPP runs on its deepest feature, with
    the atrous rates scaled to its stride; ``encoder_output_stride=16`` (or ``TimmEncoder(name,
    output_stride=16)``) dilates a timm CNN to stride 16 as smp does. Arguments as :class:`GenericModel`.
    """

    architecture = "deeplabv3plus"


class UPerNet(GenericModel):
    """UPerNet: PPM on the deepest feature, FPN over the stride >= 4 levels, fused at stride 4 (per level by
    default, ``decoder_params={"fuse": "concat"}`` for the paper's concatenation;
    :class:`~segzoo.decoders.UPerNetDecoder`), logits upsampled bilinearly. Arguments as :class:`GenericModel`.
    """

    architecture = "upernet"


class ResnetUnet(ResnetModel):
    """Unet on a torchvision ResNet: concat decoder to stride 2, logits upsampled bilinearly.

    Arguments as :class:`ResnetModel`. Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W).

    Example:
        >>> model = ResnetUnet(num_classes=2, arch="resnet34", pretrained=False)
        >>> model(torch.rand(2, 3, 100, 75)).shape
        torch.Size([2, 2, 100, 75])
    """

    architecture = "unet"


class ResnetLinknet(ResnetModel):
    """Linknet on a torchvision ResNet (sum decoder, bilinear upsampling). Arguments as :class:`ResnetModel`."""

    architecture = "linknet"


class ResnetFPNUnet(ResnetModel):
    """FPN on a torchvision ResNet (P2..P5, 128 channels). Arguments as :class:`ResnetModel`."""

    architecture = "fpn_unet"


class ResnetPSPnet(ResnetModel):
    """PSPNet on a torchvision ResNet's stride-8 stage; layer3/layer4 are not built nor run.

    Arguments as :class:`ResnetModel`.
    """

    architecture = "pspnet"


class ResnetDeepLabV3Plus(ResnetModel):
    """DeepLabV3+ on a dilated torchvision ResNet (output stride 16; ``encoder_params=dict(output_stride=8)``
    dilates layer3 too and doubles the atrous rates). ImageNet weights load as for any ResNet.

    Arguments as :class:`ResnetModel`.
    """

    architecture = "deeplabv3plus"


class ResnetUPerNet(ResnetModel):
    """UPerNet on a torchvision ResNet (PPM on layer4, FPN over layer1..layer4, 256 channels).

    Arguments as :class:`ResnetModel`.
    """

    architecture = "upernet"


def _family_classes(family: type, column: str) -> dict[str, type]:
    """The family's class per row of the table: the hand-written one (its name must be the row's ``column``),
    or one made here, named by the row (``Architecture.generic_class`` / ``resnet_class``)."""
    named = {cls.architecture: cls for cls in family.__subclasses__() if cls.architecture}
    classes = {}
    for name, row in ARCHITECTURES.items():
        if family is ResnetModel and not row.resnet_class:  # a row without a ResNet family (DPT)
            continue
        cls_name = getattr(row, column) or f"{family.__name__}_{name}"
        cls = named.get(name) or type(cls_name, (family,), {
            "architecture": name, "__doc__": f"{row.title}. Arguments as :class:`{family.__name__}`."})
        if cls.__name__ != cls_name:
            raise TypeError(f"segzoo.models.named.{cls.__name__} builds {name!r}, whose row in "
                            f"segzoo.architectures names its class {cls_name!r}")
        classes[name] = cls
    return classes


GENERIC_MODELS = _family_classes(GenericModel, "generic_class")
RESNET_MODELS = _family_classes(ResnetModel, "resnet_class")
#: public class name -> class, for every class the table names (segzoo.models exports them)
MODEL_CLASSES = {cls.__name__: cls for cls in [*GENERIC_MODELS.values(), *RESNET_MODELS.values()]
                 if cls.__name__ in model_classes()}
globals().update(MODEL_CLASSES)  # classes made from a row live here too, so pickle finds them by name

for _name, _cls in GENERIC_MODELS.items():
    register_model(_name, _cls)
for _resnet in RESNET_ENCODERS:
    for _name, _cls in RESNET_MODELS.items():
        register_model(f"{_resnet}_{_name}", _cls, arch=_resnet)
