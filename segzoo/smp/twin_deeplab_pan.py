"""smp 0.6's ``DeepLabV3``, ``DeepLabV3Plus`` and ``PAN`` as segzoo parts: ``structure="smp"`` and key mapping.

Registered in :data:`segzoo.smp.structure.SMP_STRUCTURES` (the part arguments computing smp's exact decoder
and head) and in :mod:`segzoo.smp.statedict` (smp key -> segzoo key, and what the keys tell of smp's arguments).

What differs from segzoo's own parts, and the option that gives smp's function:

- smp dilates every block of a dilated ResNet stage at the stage's rate; torchvision (segzoo's default) keeps
  the first block at the previous rate: ``ResnetEncoder(dilation="smp")``.
- DeepLab's ASPP: smp's image-pooling branch has a BatchNorm and its dropout is element-wise
  (``aspp_style="smp"``); its atrous rates are used as given at any output stride (``scale_rates=False``).
  smp's projection is one 1x1 conv over the five branches; segzoo's adds the pooled branch's share as a bias
  (``project`` + ``project_pool``): the weight is split.
- DeepLabV3+: smp's separable 3x3 conv after ASPP (``aspp_conv=True``), a separable fusion whatever
  ``decoder_aspp_separable`` (``aspp_separable``), bilinear upsampling with aligned corners.
- PAN: smp's pyramid halves the deepest feature (``pyramid_size=0``, so the feature must be >= 8x8: inputs of
  128 px at output stride 16), every FPA/GAU conv has a bias and a BatchNorm (``smp_style=True``);
  ``decoder_interpolation`` is the GAUs' resize mode.
- The heads upsample bilinearly with aligned corners (``align_corners=True``); DeepLab's is a 1x1 conv,
  PAN's a 3x3 conv.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from segzoo.smp.twin_common import aux_params

__all__ = ["STRUCTURES", "KEYS", "INFER", "guess_arch"]

def _choice(name: str, key: str, value: Any, allowed: tuple) -> Any:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"segzoo.smp.{name}(structure='smp'): {key}={value!r} is not available: use one of "
                         f"{list(allowed)} (as smp)")
    return value


def _depth(name: str, args: Mapping[str, Any]) -> int:
    depth = args["encoder_depth"]
    if not isinstance(depth, int) or isinstance(depth, bool) or not 3 <= depth <= 5:
        raise ValueError(f"segzoo.smp.{name}(structure='smp'): encoder_depth must be 3, 4 or 5 (as smp), "
                         f"got {depth!r}")
    return depth


def _aspp_args(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    channels, rates = args["decoder_channels"], args["decoder_atrous_rates"]
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"segzoo.smp.{name}(structure='smp'): decoder_channels must be an int >= 1, got {channels!r}")
    try:
        rates = [int(r) for r in rates]
    except (TypeError, ValueError):
        rates = []
    if len(rates) != 3 or min(rates) < 1:
        raise ValueError(f"segzoo.smp.{name}(structure='smp'): decoder_atrous_rates must be 3 ints >= 1 (as smp), "
                         f"got {args['decoder_atrous_rates']!r}")
    dropout = args["decoder_aspp_dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(f"segzoo.smp.{name}(structure='smp'): decoder_aspp_dropout must be a number in [0, 1], "
                         f"got {dropout!r}")
    return {"out_channels": channels, "atrous_rates": rates, "aspp_dropout": float(dropout), "scale_rates": False,
            "aspp_style": "smp"}


def _head(kernel_size: int) -> dict[str, Any]:
    return {"kernel_size": kernel_size, "upsample": "bilinear", "align_corners": True}


def _deeplabv3_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """segzoo's part arguments computing smp's DeepLabV3 (``args``: the smp arguments)."""
    _depth("DeepLabV3", args)
    stride = _choice("DeepLabV3", "encoder_output_stride", args["encoder_output_stride"], (8, 16))
    decoder = {**_aspp_args("DeepLabV3", args), "separable": bool(args["decoder_aspp_separable"])}
    return {"encoder": {"output_stride": stride, "dilation": "smp"}, "decoder": decoder, "head": _head(1)}


def _deeplabv3plus_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """segzoo's part arguments computing smp's DeepLabV3Plus (``args``: the smp arguments)."""
    _depth("DeepLabV3Plus", args)
    stride = _choice("DeepLabV3Plus", "encoder_output_stride", args["encoder_output_stride"], (8, 16))
    decoder = {**_aspp_args("DeepLabV3Plus", args), "separable": True,
               "aspp_separable": bool(args["decoder_aspp_separable"]), "aspp_conv": True, "align_corners": True,
               "low_level_stride": 4, "low_level_channels": 48, "fuse_convs": 1}
    return {"encoder": {"output_stride": stride, "dilation": "smp"}, "decoder": decoder, "head": _head(1)}


def _pan_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """segzoo's part arguments computing smp's PAN (``args``: the smp arguments)."""
    _depth("PAN", args)
    stride = _choice("PAN", "encoder_output_stride", args["encoder_output_stride"], (16, 32))
    mode = _choice("PAN", "decoder_interpolation", args["decoder_interpolation"],
                   ("nearest", "bilinear", "bicubic", "area", "nearest-exact"))
    channels = args["decoder_channels"]
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"segzoo.smp.PAN(structure='smp'): decoder_channels must be an int >= 1, got {channels!r}")
    decoder = {"channels": channels, "pyramid_size": 0, "min_stride": 4, "interpolation": mode, "smp_style": True}
    return {"encoder": {"output_stride": stride, "dilation": "smp"}, "decoder": decoder, "head": _head(3)}


# the smp arguments each structure reads (the front door lets their non-default values through to it)
_deeplabv3_structure.handles = frozenset({  # type: ignore[attr-defined]
    "encoder_output_stride", "decoder_channels", "decoder_atrous_rates", "decoder_aspp_separable",
    "decoder_aspp_dropout"})
_deeplabv3plus_structure.handles = _deeplabv3_structure.handles  # type: ignore[attr-defined]
_pan_structure.handles = frozenset({  # type: ignore[attr-defined]
    "encoder_output_stride", "decoder_channels", "decoder_interpolation"})

#: smp class -> the segzoo part arguments of ``structure="smp"``
STRUCTURES: dict[str, Callable[[Mapping[str, Any]], dict[str, dict[str, Any]]]] = {
    "DeepLabV3": _deeplabv3_structure, "DeepLabV3Plus": _deeplabv3plus_structure, "PAN": _pan_structure}


# ---- keys: smp -> segzoo ("" drops a key, None does not map, a dict splits one smp tensor over segzoo keys)

def _split_projection(value: torch.Tensor) -> dict[str, torch.Tensor]:
    """smp's ASPP projection (C, 5C, 1, 1) -> segzoo's branch part (C, 4C, 1, 1) and pooled part (C, C, 1, 1).

    A tensor of another shape is passed on whole (and nothing for the pooled part): the loader then names the
    key and shapes that do not fit, in one line.
    """
    c = value.shape[0] if value.dim() else 0
    if value.dim() != 4 or value.shape[1] <= c:
        return {"project.weight": value, "project_pool.weight": value.new_zeros(0)}
    return {"project.weight": value[:, :-c].clone(), "project_pool.weight": value[:, -c:].clone()}


def _aspp_key(rest: str, prefix: str) -> str | dict[str, Callable[[torch.Tensor], torch.Tensor]] | None:
    """segzoo's key of an smp ASPP key (``rest``: after smp's ``aspp.``), ``prefix``: segzoo's ASPP prefix."""
    m = re.fullmatch(r"convs\.([0-3])\.(.+)", rest)
    if m:  # the 1x1 branch and the three atrous branches: the same layout
        return f"{prefix}branches.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"convs\.4\.([12])\.(.+)", rest)  # image pooling: (pool), conv, BN
    if m:
        return f"{prefix}pool.{int(m.group(1)) - 1}.{m.group(2)}"
    if rest == "project.0.weight":
        return {f"{prefix}project.weight": lambda v: _split_projection(v)["project.weight"],
                f"{prefix}project_pool.weight": lambda v: _split_projection(v)["project_pool.weight"]}
    m = re.fullmatch(r"project\.1\.(.+)", rest)
    return f"{prefix}norm.{m.group(1)}" if m else None


def _common_key(key: str, depth: int) -> str | None:
    m = re.fullmatch(r"segmentation_head\.0\.(weight|bias)", key)
    if m:
        return f"head.classifier.{m.group(1)}"
    return key if re.fullmatch(r"classification_head\.3\.(weight|bias)", key) else None


def _deeplabv3_key(key: str, depth: int) -> str | dict | None:
    """segzoo's key of an smp DeepLabV3 decoder/head key (smp's older ``decoder.0/1/2.`` keys too)."""
    m = re.fullmatch(r"decoder\.([012])\.(.+)", key)
    if m:  # smp < 0.4: the decoder was a Sequential (smp's own load_state_dict renames them the same way)
        key = f"decoder.{('aspp', 'conv', 'bn')[int(m.group(1))]}.{m.group(2)}"
    if key.startswith("decoder.aspp."):
        return _aspp_key(key[len("decoder.aspp."):], "decoder.aspp.")
    m = re.fullmatch(r"decoder\.(conv|bn)\.(.+)", key)
    if m:
        return f"decoder.conv.{0 if m.group(1) == 'conv' else 1}.{m.group(2)}"
    return _common_key(key, depth)


def _deeplabv3plus_key(key: str, depth: int) -> str | dict | None:
    """segzoo's key of an smp DeepLabV3Plus decoder/head key."""
    if key.startswith("decoder.aspp.0."):
        return _aspp_key(key[len("decoder.aspp.0."):], "decoder.aspp.")
    rules = ((r"decoder\.aspp\.1\.([01])\.weight", "decoder.aspp_conv.{}.weight"),  # separable conv after ASPP
             (r"decoder\.aspp\.2\.(.+)", "decoder.aspp_conv.2.{}"),
             (r"decoder\.block1\.([01]\..+)", "decoder.reduce.{}"),
             (r"decoder\.block2\.0\.([01])\.weight", "decoder.fuse.0.{}.weight"),
             (r"decoder\.block2\.1\.(.+)", "decoder.fuse.0.2.{}"))
    for pattern, target in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return target.format(m.group(1))
    return _common_key(key, depth)


_PAN_FPA = {"branch1.1": "glob", "mid.0": "mid", "down1.1": "down1", "down2.1": "down2", "down3.1": "down3.0",
            "down3.2": "down3.1", "conv2": "lateral2", "conv1": "lateral1"}


def _pan_key(key: str, depth: int) -> str | None:
    """segzoo's key of an smp PAN decoder/head key (the GAUs: ``gau3`` is the deepest, numbered by depth)."""
    m = re.fullmatch(r"decoder\.fpa\.(.+)\.(conv|bn)\.(.+)", key)
    if m and m.group(1) in _PAN_FPA:
        return f"decoder.fpa.{_PAN_FPA[m.group(1)]}.{0 if m.group(2) == 'conv' else 1}.{m.group(3)}"
    m = re.fullmatch(r"decoder\.gau([123])\.(conv1\.1|conv2)\.(conv|bn)\.(.+)", key)
    if m:
        index = depth - 2 - int(m.group(1))  # segzoo runs them deep to shallow
        part = "gate" if m.group(2) == "conv1.1" else "conv"
        return f"decoder.gaus.{index}.{part}.{0 if m.group(3) == 'conv' else 1}.{m.group(4)}" if index >= 0 else None
    return _common_key(key, depth)


#: smp class -> its decoder/head key function
KEYS: dict[str, Callable[[str, int], Any]] = {
    "DeepLabV3": _deeplabv3_key, "DeepLabV3Plus": _deeplabv3plus_key, "PAN": _pan_key}


# ---- what the keys tell: the class and the arguments

def guess_arch(sd: Mapping[str, torch.Tensor]) -> str | None:
    """smp's class of a state dict by its decoder keys (``None``: none of these three)."""
    if "decoder.aspp.convs.0.0.weight" in sd or "decoder.0.convs.0.0.weight" in sd:
        return "DeepLabV3"
    if "decoder.aspp.0.convs.0.0.weight" in sd:
        return "DeepLabV3Plus"
    return "PAN" if "decoder.fpa.mid.0.conv.weight" in sd else None


def _encoder_depth(sd: Mapping[str, torch.Tensor], channels: int) -> dict[str, Any]:
    """``encoder_depth`` of a ResNet whose deepest used feature has ``channels`` (smp keeps unused stages)."""
    widths = [256, 512, 1024, 2048] if "encoder.layer1.0.conv3.weight" in sd else [64, 128, 256, 512]
    return {"encoder_depth": widths.index(channels) + 2} if channels in widths[1:] else {}



def _infer_deeplab(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    first = sd.get(f"{prefix}convs.0.0.weight")
    if first is None or first.dim() != 4:
        return {}
    found = {"decoder_channels": int(first.shape[0]),
             "decoder_aspp_separable": f"{prefix}convs.1.0.0.weight" in sd,
             **_encoder_depth(sd, int(first.shape[1])), **aux_params(sd)}
    return found


def _infer_deeplabv3(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    old = "decoder.0.convs.0.0.weight" in sd
    return _infer_deeplab(sd, "decoder.0." if old else "decoder.aspp.")


def _infer_pan(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    mid = sd.get("decoder.fpa.mid.0.conv.weight")
    if mid is None or mid.dim() != 4:
        return {}
    depth = 5 if "decoder.gau3.conv2.conv.weight" in sd else 4 if "decoder.gau2.conv2.conv.weight" in sd else 3
    return {"decoder_channels": int(mid.shape[0]), "encoder_depth": depth, **aux_params(sd)}


#: smp class -> the arguments its keys and shapes tell
INFER: dict[str, Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]] = {
    "DeepLabV3": _infer_deeplabv3, "DeepLabV3Plus": lambda sd: _infer_deeplab(sd, "decoder.aspp.0."),
    "PAN": _infer_pan}
