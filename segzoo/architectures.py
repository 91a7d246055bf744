"""The table of architectures: every architecture name, in one place, without torch.

One row of :data:`ARCHITECTURES` per architecture: its registry name (the key), the public classes of
the two model families (generic encoder: ``Unet``; torchvision ResNet: ``ResnetUnet``), the decoder and
head registry names with their defaults, the bridge policy, the ResNet encoder defaults and the smp 0.6
class it is compared with. Everything that lists architectures reads this table: the model registry
(:mod:`segzoo.models.named` builds and registers ``NAME`` and ``resnet*_NAME`` per row, and makes the
classes of a row that has no hand-written one), ``segzoo models`` and ``segzoo benchmark --archs``
(:mod:`segzoo.cli.args`), ``segzoo``'s lazy public names, :mod:`segzoo.benchmark.specs` and the tests.

This module imports only the standard library, so ``segzoo --help`` and ``segzoo models`` stay
torch-free. A new architecture is its decoder (and, if needed, head) file registered in
:mod:`segzoo.decoders` / :mod:`segzoo.heads` plus one row here.

Bridge policy (the same for every architecture and encoder):

- ``bridge_params`` given (a dict, even empty): a :class:`~segzoo.bridges.UnetBridge` with those
  arguments is added.
- not given: a bridge is added when both the architecture (``Architecture.bridge``) and the
  model family ask for one. The generic family asks only for its from-scratch
  :class:`~segzoo.encoders.UnetEncoder` (which, like Catalyst's Unet, stops one stage early: the
  bridge is its deepest stage); a generic model on any other encoder (``TimmEncoder``, a
  ``ResnetEncoder``, a custom ``EncoderSpec``) gets no layer it did not ask for, and works at
  the encoder's own strides. The ResNet family asks for none (a ResNet already reaches stride 32).
  PSP reads one feature map and asks for none.
- weights saved before this policy (a timm or custom encoder with the then-default bridge) have
  ``bridge.*`` keys: rebuild such a model with ``bridge_params={}`` (the loaders' error says so).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Architecture", "FormerDefault", "ARCHITECTURES", "RESNET_ENCODERS", "CATALYST_MODELS", "model_names",
           "model_classes", "resnet_architectures", "smp_twins", "architecture_of", "former_defaults_of",
           "with_former_defaults"]


@dataclass(frozen=True)
class FormerDefault:
    """A default an architecture's models had before ``since``, kept so that their checkpoints still load.

    A checkpoint whose spec does not name ``part[key]`` and whose weights have no name matching ``new_weights``
    (what only the current default has) was trained with ``value``: :mod:`segzoo.checkpoint_format` writes it
    into the spec when reading the checkpoint, and a resume into the current default is told to name it.

    Attributes:
        part: ``"decoder_params"`` or ``"head_params"``.
        key: the keyword in it.
        value: its value before ``since``.
        since: the date the default changed.
        new_weights: a regular expression matching a weight name that only the current default's models have.
        own_weights: a regular expression matching a weight name that only this architecture's models have.
        checkpoint_format: the checkpoint format version whose migration brings this former default into older
            checkpoints (:data:`segzoo.checkpoint_format.MIGRATIONS`; a default changed after a format was
            released needs a new version: checkpoints of that format were written with the former value).
    """

    part: str
    key: str
    value: Any
    since: str
    new_weights: str
    own_weights: str
    checkpoint_format: int


@dataclass(frozen=True)
class Architecture:
    """One architecture as data.

    Attributes:
        decoder: decoder registry name (``segzoo.decoders.list_decoders()``).
        head: head registry name (``segzoo.heads.list_heads()``).
        decoder_defaults: decoder keyword defaults (``decoder_params`` override them).
        head_defaults: head keyword defaults (``head_params`` override them).
        bridge: whether this architecture takes the family's default bridge (see the module docstring).
        symmetric: generic family with a bridge (its ``UnetEncoder``'s default, or ``bridge_params`` given):
            decoder ``channels`` default to the encoder's widths
            (the classic symmetric Unet; 7,849,634 parameters for ``Unet(num_classes=2)``, as Catalyst's).
        resnet_encoder: ``ResnetEncoder`` keyword defaults (``encoder_params`` override them).
        title: a short description, shown by the named classes' docstrings and ``segzoo models``.
        generic_class: public class name of the generic family (``segzoo.Unet``); ``""``: none exported.
        resnet_class: public class name of the ResNet family (``segzoo.ResnetUnet``); ``""``: the row has no
            ResNet family (no class, no ``resnetD_NAME`` names: DPT, whose plain-ViT encoder a ResNet is not).
        smp: the segmentation_models_pytorch 0.6 class it is benchmarked against (``"Unet"``), or ``None``.
        former_defaults: defaults the row had before (:class:`FormerDefault`), oldest first.
        encoder_kind: what the architecture needs from its encoder: ``"pyramid"`` (features at several
            strides: ResNets, timm CNNs, UnetEncoder) or ``"tokens"`` (the token maps of a plain ViT, all at
            one stride; the generic family's default encoder is then ``ViTEncoder("vit_small_patch16_224")``).
            A model built on an encoder of the other kind is refused in one line naming what fits. ``"any"``: every
            encoder fits (PSP reads one feature map: a pyramid's or a ViT's deepest).
    """

    decoder: str
    head: str = "unet"
    decoder_defaults: Mapping[str, Any] = field(default_factory=dict)
    head_defaults: Mapping[str, Any] = field(default_factory=dict)
    bridge: bool = True
    symmetric: bool = False
    resnet_encoder: Mapping[str, Any] = field(default_factory=dict)
    title: str = ""
    generic_class: str = ""
    resnet_class: str = ""
    smp: str | None = None
    encoder_kind: str = "pyramid"
    former_defaults: tuple[FormerDefault, ...] = ()


#: registry name -> row; each row is registered as ``NAME`` (generic family) and ``resnetD_NAME`` (if it has a
#: ResNet family)
ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture("unet", decoder_defaults={"block": "concat"}, symmetric=True,
                         title="Unet: concat skip decoder",
                         generic_class="Unet", resnet_class="ResnetUnet", smp="Unet"),
    "linknet": Architecture("unet", decoder_defaults={"block": "sum"}, title="Linknet: sum skip decoder",
                            generic_class="Linknet", resnet_class="ResnetLinknet", smp="Linknet"),
    "fpn_unet": Architecture("fpn", head="fpn", title="FPN: feature pyramid, per-level head branches",
                             generic_class="FPNUnet", resnet_class="ResnetFPNUnet", smp="FPN"),
    # PSP reads stride 8 only: the ResNet's layer3/layer4 are neither built nor run
    "pspnet": Architecture("psp", bridge=False, resnet_encoder={"layers_indices": [2]}, encoder_kind="any",
                           title="PSPNet: pyramid pooling on one feature",
                           generic_class="PSPnet", resnet_class="ResnetPSPnet", smp="PSPNet"),
    "deeplabv3plus": Architecture("deeplabv3plus", resnet_encoder={"output_stride": 16},
                                  title="DeepLabV3+: ASPP at stride 16 (dilated), stride-4 skip",
                                  generic_class="DeepLabV3Plus", resnet_class="ResnetDeepLabV3Plus",
                                  smp="DeepLabV3Plus"),
    "upernet": Architecture("upernet", title="UPerNet: PPM + FPN, levels fused at the finest stride",
                            generic_class="UPerNet", resnet_class="ResnetUPerNet", smp="UPerNet"),
    # DeepLabV3 reads the deepest feature only: the ResNet is dilated to output stride 8 (smp's default)
    "deeplabv3": Architecture("deeplabv3", resnet_encoder={"output_stride": 8, "layers_indices": [4]},
                              title="DeepLabV3: ASPP on the deepest feature (ResNet dilated to stride 8)",
                              generic_class="DeepLabV3", resnet_class="ResnetDeepLabV3", smp="DeepLabV3"),
    # no bridge: Segformer(encoder=MixTransformerEncoder(...)) is SegFormer itself (strides 4..32). The paper's
    # concat fusion: the per-level sum ("levels", same function class, fewer FLOPs) ended 0.02 Dice under smp's
    # Segformer at an equal budget on one seed of two (BENCHMARKS.md)
    "segformer": Architecture("segformer", decoder_defaults={"fuse": "concat"}, bridge=False,
                              resnet_encoder={"layers_indices": [1, 2, 3, 4]},
                              title="Segformer: all-MLP decoder over the stride >= 4 levels",
                              generic_class="Segformer", resnet_class="ResnetSegformer", smp="Segformer",
                              former_defaults=(FormerDefault("decoder_params", "fuse", "levels", "2026-12-07",
                                                             r"decoder\.fuse\.", r"decoder\.linears\.", 3),)),
    # a ResNet has no single-stride token maps: no ResNet family, no resnet*_dpt names
    "dpt": Architecture("dpt", bridge=False, encoder_kind="tokens",
                        title="DPT: ViT token maps reassembled at 4 strides, fused coarse to fine",
                        generic_class="DPT", smp="DPT"),
    # complexity 1 (two 3x3 per node): at an equal training budget a node of one 3x3 ended ~0.01 Dice under
    # smp's on one seed of two (BENCHMARKS.md), the second 3x3 keeps 2.2x fewer FLOPs than smp's decoder
    "unetplusplus": Architecture("unetplusplus", decoder_defaults={"complexity": 1},
                                 title="UNet++: nested dense skip pathways, narrow split-1x1 nodes",
                                 generic_class="UnetPlusPlus", resnet_class="ResnetUnetPlusPlus", smp="UnetPlusPlus",
                                 former_defaults=(FormerDefault("decoder_params", "complexity", 0, "2026-12-07",
                                                                r"decoder\.nodes\.[^.]+\.block\.1\.",
                                                                r"decoder\.nodes\.x\d+_\d+\.", 2),)),
    # two learned x2 head steps to full resolution: logits upsampled x4 from stride 4 ended 0.011-0.012 Dice under
    # smp's MAnet at an equal budget on both seeds; each step a transposed 2x2 conv and a 3x3 conv + ReLU without
    # BatchNorm: bilinear steps with BatchNorm (more memory passes at full resolution) kept the channels_last
    # forward at 1.4-1.5x smp's, with no better Dice (BENCHMARKS.md)
    "manet": Architecture("manet", head_defaults={"num_upsample_blocks": 2, "upsample": "transpose", "norm": "identity"},
                          title="MA-Net: position attention at the deepest stride, fusion attention per skip",
                          generic_class="MAnet", resnet_class="ResnetMAnet", smp="MAnet",
                          former_defaults=(FormerDefault("head_params", "num_upsample_blocks", 0, "2026-12-07",
                                                         r"head\.blocks\.", r"decoder\.attention\.", 2),
                                           FormerDefault("head_params", "upsample", "bilinear", "2026-12-07",
                                                         r"head\.(blocks\.0|upsample)\.weight$",
                                                         r"decoder\.attention\.", 3),
                                           FormerDefault("head_params", "norm", "bn", "2026-12-07",
                                                         r"head\.blocks\.\d+\.0\.bias$", r"decoder\.attention\.", 3))),
    "pan": Architecture("pan", title="PAN: feature pyramid attention, global attention upsampling, any input size",
                        generic_class="PAN", resnet_class="ResnetPAN", smp="PAN"),
}

#: the torchvision ResNets of the ResNet family (the keys of segzoo.encoders.RESNET_CHANNELS, checked by a test)
RESNET_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

#: Catalyst 19.x's legacy model classes (segzoo.models.catalyst): public class name -> the registry name it
#: adds, or ``None`` when it builds a ResNet-family model and shares that family's names (``resnet18_unet``)
CATALYST_MODELS: dict[str, str | None] = {"MobileUnet": "mobilenetv2_unet", "ResNetUnet": None, "ResNetLinknet": None}


def model_names() -> list[str]:
    """Every built-in registry name, sorted as :func:`segzoo.list_models` sorts them: each row as ``NAME``
    and ``resnetD_NAME``, and the names the Catalyst models add."""
    names = [*ARCHITECTURES, *(f"{enc}_{arch}" for enc in RESNET_ENCODERS for arch in resnet_architectures()),
             *(name for name in CATALYST_MODELS.values() if name)]
    return sorted(names)


def resnet_architectures() -> list[str]:
    """The rows that have a ResNet family (``resnet_class`` set), in table order."""
    return [name for name, row in ARCHITECTURES.items() if row.resnet_class]


def model_classes() -> list[str]:
    """The public model class names (``segzoo.models`` and the lazy ``segzoo`` namespace define them): each
    row's generic and ResNet classes, then the Catalyst classes."""
    rows = ARCHITECTURES.values()
    return [*(row.generic_class for row in rows if row.generic_class),
            *(row.resnet_class for row in rows if row.resnet_class), *CATALYST_MODELS]


def smp_twins() -> dict[str, str]:
    """Architecture name -> its smp 0.6 class name, for the rows that have one."""
    return {name: row.smp for name, row in ARCHITECTURES.items() if row.smp}


def architecture_of(name: str) -> str | None:
    """The row of a built-in registry name: ``"manet"`` and ``"resnet34_manet"`` -> ``"manet"``; ``None`` for
    other names (a user's registered model, a Catalyst class's)."""
    if name in ARCHITECTURES:
        return name
    return next((arch for arch in resnet_architectures() for enc in RESNET_ENCODERS if name == f"{enc}_{arch}"), None)


def _trained_with(former: FormerDefault, weight_names: Collection[str]) -> bool:
    """Whether weights named ``weight_names`` are of ``former``'s architecture and have its former form."""
    return (any(re.match(former.own_weights, n) for n in weight_names)
            and not any(re.match(former.new_weights, n) for n in weight_names))


def former_defaults_of(weight_names: Collection[str]) -> list[FormerDefault]:
    """The rows' former defaults that weights named ``weight_names`` were trained with: the weights are of that
    row's architecture (``own_weights``) and have none of the current default's (``new_weights``)."""
    return [f for arch in ARCHITECTURES.values() for f in arch.former_defaults if _trained_with(f, weight_names)]


def with_former_defaults(name: str, kwargs: Mapping[str, Any] | None,
                         weight_names: Collection[str]) -> dict[str, Any] | None:
    """The keyword arguments of the built-in registry model ``name`` (``"manet"``, ``"resnet34_manet"``) completed
    with the former defaults its weights were trained with, for those the arguments do not name; ``None``: nothing
    to add (another model, current-default weights, or every changed keyword named)."""
    arch = architecture_of(name)
    if arch is None or (kwargs is not None and not isinstance(kwargs, Mapping)):
        return None
    out = dict(kwargs or {})
    for f in ARCHITECTURES[arch].former_defaults:
        params = out.get(f.part)
        if (params is None or isinstance(params, Mapping) and f.key not in params) and _trained_with(f, weight_names):
            out[f.part] = {**(params or {}), f.key: f.value}
    return None if out == dict(kwargs or {}) else out
