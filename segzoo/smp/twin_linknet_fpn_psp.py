"""smp 0.6's ``Linknet``, ``FPN`` and ``PSPNet`` as segzoo parts (``structure="smp"``) and their key renaming.

Registered in :data:`segzoo.smp.structure.SMP_STRUCTURES` (:data:`STRUCTURES`: segzoo's part arguments that
compute smp's exact decoder and head) and in :mod:`segzoo.smp.statedict` (:data:`KEYS`: smp decoder/head key
-> segzoo key; :data:`INFER`: smp arguments read from a state dict's keys and shapes). What each maps:

- ``Linknet``: any ``encoder_depth`` >= 2, ``decoder_use_norm`` ``"batchnorm"`` / ``"identity"``. smp's block
  (1x1 reduce, 4x4 stride-2 transposed conv, 1x1 expand, + skip) is segzoo's sum block with ``transposed_up``;
  smp's last block (no skip, full resolution, 32 channels) is the decoder's ``final_channels`` block.
- ``FPN``: ``encoder_depth=5`` (smp's output has the input's size only there), ``decoder_pyramid_channels``,
  ``decoder_segmentation_channels`` (a multiple of 32: smp's GroupNorm), ``decoder_merge_policy`` ``"add"`` /
  ``"cat"``, ``decoder_dropout``, ``decoder_interpolation`` ``"nearest"`` / ``"bilinear"``.
- ``PSPNet``: ``encoder_depth=3`` (smp's default, with its ``upsampling=8``), ``psp_out_channels``,
  ``decoder_use_norm`` ``"batchnorm"`` / ``"identity"`` (smp's older ``psp_use_batchnorm``), ``psp_dropout``.

All three: ``aux_params`` (smp's ``classification_head`` keys are segzoo's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from segzoo.encoders.resnet import RESNET_CHANNELS
from segzoo.smp.twin_common import aux_params, decoder_norm, head_key, size

__all__ = ["STRUCTURES", "KEYS", "INFER"]

_NORMS = {"batchnorm": "bn", True: "bn", "identity": "identity", False: "identity"}

Parts = dict[str, dict[str, Any]]


def _norm(name: str, args: Mapping[str, Any]) -> str:
    value = args["decoder_use_norm"]
    if value not in _NORMS:
        raise ValueError(f"segzoo.smp.{name}(structure='smp'): decoder_use_norm={value!r} is not available: "
                         f"use one of {list(_NORMS)}")
    return _NORMS[value]


def _linknet_structure(args: Mapping[str, Any]) -> Parts:
    """segzoo's decoder/head arguments that compute smp's Linknet (``args``: the smp arguments)."""
    if args["encoder_depth"] < 2:
        raise ValueError(f"segzoo.smp.Linknet(structure='smp'): encoder_depth={args['encoder_depth']} leaves no "
                         f"skip feature: use 2..5")
    decoder = {"transposed_up": True, "final_channels": 32, "norm": _norm("Linknet", args)}
    return {"encoder": {}, "decoder": decoder, "head": {"num_upsample_blocks": 0, "kernel_size": 1}}


def _fpn_structure(args: Mapping[str, Any]) -> Parts:
    """segzoo's decoder/head arguments that compute smp's FPN (``args``: the smp arguments)."""
    if args["encoder_depth"] != 5:
        raise ValueError(f"segzoo.smp.FPN(structure='smp'): encoder_depth={args['encoder_depth']} is not available "
                         f"(smp's FPN returns the input's size at encoder_depth=5 only): use 5")
    mode, merge = str(args["decoder_interpolation"]), args["decoder_merge_policy"]
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"segzoo.smp.FPN(structure='smp'): decoder_interpolation={mode!r} is not available: "
                         f"use 'nearest' or 'bilinear'")
    if merge not in ("add", "cat"):
        raise ValueError(f"segzoo.smp.FPN(structure='smp'): decoder_merge_policy={merge!r} is not available: "
                         f"use 'add' or 'cat'")
    width = int(args["decoder_segmentation_channels"])
    if width % 32:
        raise ValueError(f"segzoo.smp.FPN(structure='smp'): decoder_segmentation_channels={width} must be a "
                         f"multiple of 32 (smp's GroupNorm(32, ...))")
    decoder = {"pyramid_channels": int(args["decoder_pyramid_channels"]), "num_levels": 4, "upsample": mode}
    head = {"hidden_channels": width, "dropout": float(args["decoder_dropout"] or 0.0), "norm": "gn",
            "stepwise": True, "merge": merge, "upsample": "bilinear", "align_corners": True}
    return {"encoder": {}, "decoder": decoder, "head": head}


def _psp_structure(args: Mapping[str, Any]) -> Parts:
    """segzoo's decoder/head arguments that compute smp's PSPNet (``args``: the smp arguments)."""
    if 2 ** args["encoder_depth"] != args["upsampling"]:
        raise ValueError(f"segzoo.smp.PSPNet(structure='smp'): encoder_depth={args['encoder_depth']} with "
                         f"upsampling={args['upsampling']} does not return the input's size: use encoder_depth=3 "
                         f"(smp's default, upsampling=8)")
    norm = _norm("PSPNet", args)
    decoder = {"out_channels": int(args["psp_out_channels"]), "dropout": float(args["psp_dropout"] or 0.0),
               "norm": norm, "branch_norm": norm, "align_corners": True, "input_last": True}
    head = {"kernel_size": 3, "upsample": "bilinear", "align_corners": True}
    return {"encoder": {}, "decoder": decoder, "head": head}



def _linknet_key(key: str, depth: int) -> str | None:
    m = re.fullmatch(r"decoder\.blocks\.(\d+)\.block\.([012])\.(.+)", key)
    if m:
        block, layer = int(m.group(1)), ("reduce", "up", "expand")[int(m.group(2))]
        if block < depth - 1:
            return f"decoder.blocks.{block}.{layer}.{m.group(3)}"
        return f"decoder.final.0.{layer}.{m.group(3)}" if block == depth - 1 else None
    return head_key(key)


def _fpn_key(key: str, depth: int) -> str | None:
    m = re.fullmatch(r"decoder\.(?:p5|p([234])\.skip_conv)\.(weight|bias)", key)
    if m:  # segzoo's lateral convs: shallow (stride 4, smp's p2) to deep (p5)
        return f"decoder.lateral.{int(m.group(1) or 5) - 2}.{m.group(2)}"
    m = re.fullmatch(r"decoder\.seg_blocks\.([0-3])\.block\.(\d+)\.block\.([01])\.(.+)", key)
    if m:  # smp's seg_blocks run deep to shallow; its k-th conv is segzoo's branch layer 2k
        return f"head.branches.{3 - int(m.group(1))}.{2 * int(m.group(2))}.{m.group(3)}.{m.group(4)}"
    return head_key(key)


def _psp_key(key: str, depth: int) -> str | None:
    m = re.fullmatch(r"decoder\.psp\.blocks\.(\d+)\.pool\.1\.([01])\.(.+)", key)
    if m:
        return f"decoder.branches.{m.group(1)}.conv.{m.group(2)}.{m.group(3)}"
    m = re.fullmatch(r"decoder\.conv\.([01])\.(.+)", key)
    if m:
        return f"decoder.fuse.{m.group(1)}.{m.group(2)}"
    return head_key(key)



def _infer_linknet(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    blocks = {int(k.split(".")[2]) for k in sd if re.match(r"decoder\.blocks\.\d+\.block\.0\.0\.weight$", k)}
    if not blocks:
        return {}
    return {"encoder_depth": len(blocks), "decoder_use_norm": decoder_norm(sd, "Linknet", "decoder.blocks.0.block.0"),
            **aux_params(sd)}


def _infer_fpn(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    found: dict[str, Any] = aux_params(sd)
    if "decoder.p5.weight" in sd:
        found["decoder_pyramid_channels"] = size(sd, "decoder.p5.weight", 0)
    seg = sd.get("decoder.seg_blocks.0.block.0.block.0.weight")
    if seg is not None:
        found["decoder_segmentation_channels"] = width = size(sd, "decoder.seg_blocks.0.block.0.block.0.weight")
        if "segmentation_head.0.weight" in sd and size(sd, "segmentation_head.0.weight", 1) == 4 * width:
            found["decoder_merge_policy"] = "cat"
    return found


def _infer_psp(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    conv = sd.get("decoder.conv.0.weight")
    if conv is None:
        return {}
    found: dict[str, Any] = {"psp_out_channels": size(sd, "decoder.conv.0.weight"),
                             "decoder_use_norm": decoder_norm(sd, "PSPNet", "decoder.conv"), **aux_params(sd)}
    # smp keeps every ResNet layer whatever encoder_depth: the PSP input's width tells the depth (the deeper of
    # two stages of one width: depths 1 and 2 of a resnet18 do not return the input's size anyway)
    widths = RESNET_CHANNELS["resnet50" if "encoder.layer1.0.conv3.weight" in sd else "resnet18"]
    width = size(sd, "decoder.conv.0.weight", 1) // 2
    if width in widths:
        found["encoder_depth"] = len(widths) - widths[::-1].index(width)
    return found


#: smp class -> segzoo's part arguments of ``structure="smp"`` (from the smp arguments)
STRUCTURES: dict[str, Callable[[Mapping[str, Any]], Parts]] = {
    "Linknet": _linknet_structure, "FPN": _fpn_structure, "PSPNet": _psp_structure}
#: smp class -> (smp decoder/head key, encoder_depth) -> segzoo key, or ``None`` if it does not map
KEYS: dict[str, Callable[[str, int], str | None]] = {"Linknet": _linknet_key, "FPN": _fpn_key, "PSPNet": _psp_key}
#: smp class -> the smp arguments a state dict's decoder/head keys and shapes tell
INFER: dict[str, Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]] = {
    "Linknet": _infer_linknet, "FPN": _infer_fpn, "PSPNet": _infer_psp}
