"""smp 0.6 weights in segzoo: :func:`from_smp` and :func:`load_smp_state_dict`.

segzoo's own decoders differ from smp's (widths, block layout, head kernel), so smp's weights load into a
front-door model built with ``structure="smp"``: segzoo's parts configured to smp's exact function, same
outputs on the same input. The keys are renamed per architecture (the ResNet encoder: smp's keys are
torchvision's ``conv1/bn1/layer1..4``; the decoder and head: a table per architecture).

Which smp models map: ``Unet`` on smp's ResNet encoders (``resnet18`` ... ``resnet152``), any
``encoder_depth``, ``decoder_channels``, ``decoder_use_norm`` ``"batchnorm"`` or ``"identity"``,
``decoder_interpolation`` ``"nearest"`` or ``"bilinear"``; ``Linknet``, ``FPN`` and ``PSPNet`` on the same
encoders (their arguments: :mod:`segzoo.smp.twin_linknet_fpn_psp`). ``DeepLabV3``, ``DeepLabV3Plus`` and ``PAN`` on the same
encoders, every smp argument (``encoder_depth`` 3-5, ``encoder_output_stride``, ``decoder_channels``, the ASPP's
rates, separability and dropout, PAN's ``decoder_interpolation``) (:mod:`segzoo.smp.twin_deeplab_pan`).
``UnetPlusPlus`` (``decoder_attention_type=None``),
``MAnet`` (any ``decoder_pab_channels``) and ``UPerNet`` (any ``decoder_channels``, ``encoder_depth`` >= 3) on the
same encoders and arguments (:mod:`segzoo.smp.twin_unetpp_manet_upernet`). ``Segformer`` on smp's ResNets, MiT (``mit_b0`` ...
``mit_b5``) and timm encoders, any ``decoder_segmentation_channels``, ``encoder_depth`` 3..5 (MiT: 5), and ``DPT``
on timm's plain ViTs (``"tu-vit_*"``), any ``decoder_readout``, ``encoder_depth``, ``encoder_output_indices``,
decoder widths (:mod:`segzoo.smp.twin_segformer_dpt`). Every class also on smp's timm CNN encoders (``"tu-resnet18"``,
strides 2 ... 32; keys ``encoder.model.*`` as segzoo's ``TimmEncoder``), and with ``aux_params`` (``aux_params``
on DPT: with ``decoder_readout="ignore"`` only). Anything else (another architecture, encoder,
an attention block) is one :class:`~segzoo.errors.CheckpointError` line naming the first smp key that does
not map and what does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from segzoo.checkpoint import clean_state_dict, read_torch_dict
from segzoo.encoders.weights import load_into
from segzoo.errors import CheckpointError
from segzoo.smp import twin_deeplab_pan, twin_linknet_fpn_psp, twin_segformer_dpt, twin_unetpp_manet_upernet
from segzoo.smp.models import MODEL_CLASSES, SIGNATURES, SmpModel
from segzoo.smp.structure import SMP_STRUCTURES
from segzoo.smp.twin_common import decoder_norm, size

__all__ = ["from_smp", "load_smp_state_dict", "read_smp_state_dict", "smp_to_segzoo_keys"]

Convert = Callable[[torch.Tensor], torch.Tensor]


def _maps() -> str:
    return (f"smp's {', '.join(sorted(_KEYS))} map, on smp's ResNets (resnet18 ... resnet152), timm CNNs "
            f"('tu-...') and, for Segformer, MiT ('mit_b0'...)")


def _resnet_key(key: str, depth: int) -> str | None:
    """segzoo's key of an smp ResNet encoder key, ``""`` for a key to drop, ``None`` if it does not map."""
    rules = ((r"encoder\.conv1\.(.+)", "encoder.stages.0.0.{}", 0), (r"encoder\.bn1\.(.+)", "encoder.stages.0.1.{}", 0),
             (r"encoder\.layer1\.(.+)", "encoder.stages.1.1.{}", 1))
    for pattern, target, stage in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return target.format(m.group(1)) if stage < depth else ""
    m = re.fullmatch(r"encoder\.layer([234])\.(.+)", key)
    if m:  # smp keeps the stages an encoder_depth < 5 does not run; segzoo does not build them
        return f"encoder.stages.{m.group(1)}.{m.group(2)}" if int(m.group(1)) < depth else ""
    return "" if key.startswith("encoder.fc.") else None


def _unet_key(key: str, depth: int) -> str | None:
    m = re.fullmatch(r"decoder\.blocks\.(\d+)\.conv([12])\.(\d+\..+)", key)
    if m:
        block, conv, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if block < depth - 1:
            return f"decoder.blocks.{block}.block.{conv - 1}.{rest}"
        return f"head.blocks.{conv}.{rest}" if block == depth - 1 else None
    m = re.fullmatch(r"segmentation_head\.0\.(weight|bias)", key)
    return f"head.classifier.{m.group(1)}" if m else None


#: smp class -> its decoder/head key function: segzoo's key, ``(key, tensor conversion)``, ``{segzoo key: split}``
#: (one smp tensor over several segzoo ones), ``""`` (dropped) or ``None`` (does not map); encoder keys it does not
#: map go to the encoder key functions
_KEYS: dict[str, Callable[[str, int], Any]] = {
    "Unet": _unet_key,
    **twin_linknet_fpn_psp.KEYS,  # Linknet, FPN, PSPNet
    **twin_deeplab_pan.KEYS,  # DeepLabV3, DeepLabV3Plus, PAN
    **twin_unetpp_manet_upernet.KEYS,  # UnetPlusPlus, MAnet, UPerNet
    "Segformer": twin_segformer_dpt.segformer_key,
    "DPT": twin_segformer_dpt.dpt_key,
}
#: smp class -> a function of (state dict, smp arguments) run before the keys are mapped (renumbering, dropping
#: what segzoo does not build, checks that need the whole state dict)
_PREPARE: dict[str, Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], dict[str, torch.Tensor]]] = {}
_PREPARE["Segformer"] = twin_segformer_dpt.prepare_segformer
_PREPARE["DPT"] = twin_segformer_dpt.prepare_dpt
#: smp class -> whether a state dict's keys are that class's (the twin modules' architectures)
_GUESS = {**twin_unetpp_manet_upernet.GUESS}


def _encoder_key(key: str, depth: int) -> str | None:
    """segzoo's key of an smp encoder key (ResNet, timm, MiT) or aux_params head key, ``None`` if it does not map."""
    if key.startswith("classification_head."):
        return key  # smp's ClassificationHead and segzoo's have the same layout
    if not key.startswith("encoder."):
        return None
    target = _resnet_key(key, depth)
    return target if target is not None else twin_segformer_dpt.encoder_key(key, depth)


def smp_to_segzoo_keys(state_dict: Mapping[str, torch.Tensor], smp_class: str, encoder_depth: int = 5,
                       arguments: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """``state_dict`` (smp ``smp_class``'s keys) with segzoo's ``structure="smp"`` keys (dropped: unused keys).

    ``arguments``: the smp arguments (``encoder_name``...), for the classes whose mapping needs them (DPT).
    A key function of ``_KEYS`` returns segzoo's key, ``""`` (drop), ``None`` (does not map) or a dict
    ``{segzoo key: function of the smp tensor}`` (one smp tensor split over several segzoo ones).

    Raises:
        CheckpointError: the first smp key that does not map, and what does.
    """
    decoder_key = _KEYS.get(smp_class)
    prepare = _PREPARE.get(smp_class)
    if prepare is not None:
        state_dict = prepare(state_dict, {"encoder_depth": encoder_depth, **(arguments or {})})
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        target = decoder_key(key, encoder_depth) if decoder_key else None
        if target is None:
            target = _encoder_key(key, encoder_depth)
        if target is None:
            raise CheckpointError(f"smp {smp_class} key {key!r} does not map onto segzoo ({_maps()})")
        if isinstance(target, tuple):
            target, convert = target
            value = convert(value)
        if isinstance(target, dict):
            out.update({name: split(value) for name, split in target.items()})
        elif target:
            out[target] = value
    return out


def _unwrap(obj: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            return _unwrap(obj[key])
    return dict(obj)


def read_smp_state_dict(source: str | os.PathLike | Mapping[str, Any] | nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of an smp model, a state-dict mapping or a file (``torch.load(weights_only=True)``).

    ``{"state_dict": ...}``, ``{"model": ...}`` and ``{"model_state_dict": ...}`` are unwrapped; DDP's
    ``module.`` and ``torch.compile``'s ``_orig_mod.`` prefixes are stripped, and a ``model.`` prefix on every
    key (a Lightning module's attribute) too.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a torch file of plain data, or entries that are not tensors.
        TypeError: ``source`` is none of these.
    """
    if isinstance(source, nn.Module):
        obj: dict[str, Any] = dict(source.state_dict())
    elif isinstance(source, (str, os.PathLike)):
        obj = _unwrap(read_torch_dict(source))
    elif isinstance(source, Mapping):
        obj = _unwrap(source)
    else:
        raise TypeError(f"an smp model, state dict or file is needed, got {type(source).__name__}")
    where = f" in {os.fspath(source)}" if isinstance(source, (str, os.PathLike)) else ""
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad or not obj:
        raise CheckpointError(f"not an smp state dict{where}: " + (f"non-tensor entries {bad[:3]}" if bad else "empty"))
    obj = clean_state_dict(obj)
    if all(k.startswith("model.") for k in obj):
        obj = {k[len("model."):]: v for k, v in obj.items()}
    return obj


def load_smp_state_dict(model: nn.Module, state_dict: str | os.PathLike | Mapping[str, Any] | nn.Module) -> nn.Module:
    """Load smp 0.6 weights into ``model``, a front-door model built with ``structure="smp"``; returns it.

    ``state_dict``: anything :func:`read_smp_state_dict` reads. Loaded strictly (every key, shape and dtype).

    Raises:
        ValueError: ``model`` is not a ``segzoo.smp`` model with ``structure="smp"``.
        CheckpointError: a key that does not map (the first one is named), or weights that do not fit.
    """
    if not isinstance(model, SmpModel) or getattr(model, "structure", None) != "smp":
        raise ValueError(f"load_smp_state_dict needs a segzoo.smp model built with structure='smp' (e.g. "
                         f"segzoo.smp.Unet(..., structure='smp')), got {type(model).__name__}; or use from_smp")
    sd = smp_to_segzoo_keys(read_smp_state_dict(state_dict), model.smp_name, model.smp_arguments["encoder_depth"],
                            model.smp_arguments)
    load_into(model, sd, f"segzoo.smp.{model.smp_name}(structure='smp')",
              hint=f" (smp's {model.smp_name} arguments must match: encoder_name, encoder_depth, decoder "
                   f"arguments, in_channels, classes)")
    return model


def _resnet_name(sd: Mapping[str, torch.Tensor]) -> str | None:
    counts = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"encoder.layer{i}.")}) for i in range(1, 5))
    bottleneck = any(k.startswith("encoder.layer1.0.conv3.") for k in sd)
    names = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
             ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}
    return names.get((counts, bottleneck))


def _infer_unet(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    blocks = sorted({int(k.split(".")[2]) for k in sd if re.match(r"decoder\.blocks\.\d+\.conv1\.0\.weight$", k)})
    if not blocks:
        return {}
    widths = [size(sd, f"decoder.blocks.{i}.conv1.0.weight", 0) for i in blocks]
    return {"encoder_depth": len(widths), "decoder_channels": widths,
            "decoder_use_norm": decoder_norm(sd, "Unet", "decoder.blocks.0.conv1")}


def _infer(sd: Mapping[str, torch.Tensor], arch: str | None) -> tuple[str | None, dict[str, Any]]:
    """smp's class and arguments, as far as the keys and shapes of ``sd`` tell them."""
    if isinstance(arch, str):  # any case, as from_smp takes it
        arch = {name.lower(): name for name in MODEL_CLASSES}.get(arch.lower(), arch)
    if arch is None:  # the twin modules' architectures (their tables)
        arch = next((name for name, guess in _GUESS.items() if guess(sd)), None)
    if arch is None:
        arch = "Unet" if any(re.match(r"decoder\.blocks\.\d+\.conv1\.", k) for k in sd) else \
            "Linknet" if any(re.match(r"decoder\.blocks\.\d+\.block\.", k) for k in sd) else \
            "FPN" if "decoder.p5.weight" in sd else \
            "PSPNet" if any(k.startswith("decoder.psp.blocks.") for k in sd) else twin_deeplab_pan.guess_arch(sd)
        arch = arch or ("Segformer" if "decoder.fuse_stage.0.weight" in sd else None)
        arch = arch or ("DPT" if "decoder.fusion_blocks.0.project.weight" in sd else None)
    found: dict[str, Any] = {}
    if "encoder.conv1.weight" in sd:
        found["in_channels"] = size(sd, "encoder.conv1.weight", 1)
    if "segmentation_head.0.weight" in sd:
        found["classes"] = size(sd, "segmentation_head.0.weight", 0)
    name = _resnet_name(sd)
    if name:
        found["encoder_name"] = name
    infer = next((f for name, f in _INFER.items() if name.lower() == str(arch).lower()), None)
    found.update(infer(sd) if infer else {})
    return arch, found


#: smp class -> the arguments its keys and shapes tell
_INFER: dict[str, Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]] = {"Unet": _infer_unet}
_INFER["Segformer"] = twin_segformer_dpt.infer_segformer
_INFER["DPT"] = twin_segformer_dpt.infer_dpt
_INFER.update(twin_linknet_fpn_psp.INFER)  # Linknet, FPN, PSPNet
_INFER.update(twin_deeplab_pan.INFER)  # DeepLabV3, DeepLabV3Plus, PAN
_INFER.update(twin_unetpp_manet_upernet.INFER)  # UnetPlusPlus, MAnet, UPerNet


def from_smp(source: str | os.PathLike | Mapping[str, Any] | nn.Module, arch: str | None = None,
             encoder_name: str | None = None, **smp_kwargs: Any) -> nn.Module:
    """The segzoo twin of an smp 0.6 model, with its weights: same outputs on the same input.

    Args:
        source: an smp model (its class and arguments are read from it), its ``state_dict()``, or a file
            of one (``torch.save``'d; ``{"state_dict": ...}`` / ``{"model": ...}`` and ``module.``
            prefixes accepted).
        arch: smp's class name (``"Unet"``, any case); default: the model's class, or guessed from the keys.
        encoder_name: smp's encoder name; default: the model's, or read from the keys (ResNets).
        **smp_kwargs: smp constructor arguments (``decoder_channels=``, ``activation=``...); defaults: the
            model's, or what the keys and shapes tell (depth, widths, norm, ``in_channels``, ``classes``).

    Returns:
        A ``segzoo.smp`` model built with ``structure="smp"`` (train mode, as smp's constructors; an smp
        model's mode is copied), in NCHW layout as smp (``model.set_layout("auto")`` for segzoo's per-machine
        choice: outputs then equal within float rounding). Shapes: (B, in_channels, H, W) -> (B, classes, H, W).

    Raises:
        CheckpointError: an architecture or encoder that does not map (one line naming the first smp key
            that does not), or weights that do not fit the arguments given.
        KeyError: ``arch`` is not a class of ``segzoo.smp``.
    """
    sd = read_smp_state_dict(source)
    config: dict[str, Any] = {}
    if isinstance(source, nn.Module):
        config = dict(getattr(source, "_hub_mixin_config", None) or {})
        if config.get("decoder_use_batchnorm") is not None:  # smp's older spelling: it won over the default
            config["decoder_use_norm"] = config["decoder_use_batchnorm"]
        config.pop("decoder_use_batchnorm", None)
        arch = arch or type(source).__name__
    by_lower = {k.lower(): k for k in MODEL_CLASSES}
    if isinstance(arch, str):  # any case, before reading the keys (the inference is per class)
        arch = by_lower.get(arch.lower(), arch)
    arch, found = _infer(sd, arch)
    if arch is None or arch.lower() not in by_lower:
        raise KeyError(f"from_smp: arch={arch!r} is not a segzoo.smp class ({sorted(MODEL_CLASSES)}); pass arch=")
    arch = by_lower[arch.lower()]
    if arch not in SMP_STRUCTURES:  # name the first key that does not map
        smp_to_segzoo_keys(sd, arch, 5)
    kwargs = {**found, **{k: v for k, v in config.items() if k != "aux_params" or v is not None}, **smp_kwargs}
    kwargs["encoder_weights"] = None
    if encoder_name is not None:
        kwargs["encoder_name"] = encoder_name
    elif "encoder_name" not in kwargs:
        smp_to_segzoo_keys(sd, arch, 5)  # a non-ResNet encoder: its first key does not map
        key = next((k for k in sd if k.startswith("encoder.")), "encoder")
        raise CheckpointError(f"from_smp: smp {arch} key {key!r}: the keys do not tell the encoder's name (smp's "
                              f"timm encoders): pass encoder_name='tu-<timm name>' (or the smp model itself)")
    sd = smp_to_segzoo_keys(sd, arch, int(kwargs.get("encoder_depth", dict(SIGNATURES[arch]).get("encoder_depth", 5))),
                            kwargs)  # before building: a clear error first
    try:
        model = MODEL_CLASSES[arch](**kwargs, structure="smp")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"from_smp: cannot build segzoo.smp.{arch} for these weights: {exc}") from None
    load_into(model, sd, f"segzoo.smp.{arch}(structure='smp')",
              hint=f" (smp's {arch} arguments must match: encoder_name, encoder_depth, decoder arguments, "
                   f"in_channels, classes)")
    # smp runs NCHW: so does the twin, for smp's outputs to the last bit (set_layout("auto") for segzoo's
    # faster layout choice, equal within float rounding)
    model.set_layout(False, source="from_smp: smp's NCHW layout")
    if isinstance(source, nn.Module):
        model.train(source.training)
    return model
