"""smp 0.6's UnetPlusPlus, MAnet and UPerNet on segzoo's parts (``structure="smp"``) and their weights' keys.

Three tables, registered by :mod:`segzoo.smp.structure` (:data:`STRUCTURES`: segzoo's part arguments that
compute smp's exact decoder and head) and :mod:`segzoo.smp.statedict` (:data:`KEYS`: smp key -> segzoo key;
:data:`GUESS` and :data:`INFER`: the smp class and arguments a state dict's keys tell).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from segzoo.errors import CheckpointError
from segzoo.smp.twin_common import aux_params, decoder_norm, head_key, size

__all__ = ["STRUCTURES", "KEYS", "GUESS", "INFER"]

_NORMS = {"batchnorm": "bn", True: "bn", "identity": "identity", False: "identity"}
_MODES = ("nearest", "bilinear")


def _norm(name: str, value: Any) -> str:
    if not isinstance(value, (str, bool)) or value not in _NORMS:  # smp's dict form: no segzoo twin
        raise ValueError(f"segzoo.smp.{name}(structure='smp'): decoder_use_norm={value!r} is not available: "
                         f"use one of {list(_NORMS)}")
    return _NORMS[value]


def _widths_and_mode(name: str, args: Mapping[str, Any]) -> tuple[list[int], str]:
    widths = [int(c) for c in args["decoder_channels"]]
    if len(widths) != args["encoder_depth"]:
        raise ValueError(f"segzoo.smp.{name}: decoder_channels {widths} must give one width per encoder stage "
                         f"(encoder_depth={args['encoder_depth']}), as smp")
    mode = str(args["decoder_interpolation"])
    if mode not in _MODES:
        raise ValueError(f"segzoo.smp.{name}(structure='smp'): decoder_interpolation={mode!r} is not available: "
                         f"use 'nearest' or 'bilinear'")
    return widths, mode


def _full_resolution_head(width: int, norm: str, mode: str) -> dict[str, Any]:
    # smp's last decoder block (no skip, x2 to full resolution, two 3x3 convs) is segzoo's head upsample
    # block; smp's head is a 3x3 conv
    return {"num_upsample_blocks": 1, "block_channels": width, "block_convs": 2, "kernel_size": 3, "norm": norm,
            "upsample": mode}


def _unetplusplus_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """smp's UnetPlusPlus: UNet++'s original concat nodes, inner nodes as wide as their skip feature."""
    widths, mode = _widths_and_mode("UnetPlusPlus", args)
    if args.get("decoder_attention_type") is not None:
        raise ValueError(f"segzoo.smp.UnetPlusPlus(structure='smp'): decoder_attention_type="
                         f"{args['decoder_attention_type']!r} is not available (segzoo has no scse block): use None")
    norm = _norm("UnetPlusPlus", args["decoder_use_norm"])
    decoder = {"channels": widths[:-1][::-1], "complexity": 1, "upsample": mode, "norm": norm, "node": "concat",
               "inner_width": "feature"}
    return {"encoder": {}, "decoder": decoder, "head": _full_resolution_head(widths[-1], norm, mode)}


def _manet_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """smp's MAnet: its PAB on the deepest feature (no reduction), MFAB concat blocks down to stride 2."""
    widths, mode = _widths_and_mode("MAnet", args)
    norm = _norm("MAnet", args["decoder_use_norm"])
    decoder = {"channels": widths[:-1][::-1], "key_channels": int(args["decoder_pab_channels"]), "complexity": 1,
               "upsample": mode, "min_stride": 1, "norm": norm, "fusion": "concat", "attention": "global",
               "reduce": False}
    return {"encoder": {}, "decoder": decoder, "head": _full_resolution_head(widths[-1], norm, mode)}


def _upernet_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """smp's UPerNet: features layer-normalized, a Conv-Norm-ReLU PPM, the concat fusion (3x3), a 1x1 head
    whose x4 logits resize aligns corners."""
    if args["encoder_depth"] < 3:
        raise ValueError(f"segzoo.smp.UPerNet: encoder_depth must be >= 3 as smp's, got {args['encoder_depth']}")
    norm = _norm("UPerNet", args["decoder_use_norm"])
    decoder = {"channels": int(args["decoder_channels"]), "fuse": "concat", "fuse_kernel": 3, "norm": norm,
               "ppm_norm": norm, "feature_norm": "layernorm", "min_stride": 4}
    return {"encoder": {}, "decoder": decoder,
            "head": {"kernel_size": 1, "upsample": "bilinear", "align_corners": True}}


#: smp class -> segzoo's part arguments of ``structure="smp"`` (from smp's arguments)
STRUCTURES: dict[str, Callable[[Mapping[str, Any]], dict[str, dict[str, Any]]]] = {
    "UnetPlusPlus": _unetplusplus_structure,
    "UPerNet": _upernet_structure,
    "MAnet": _manet_structure,
}



def _unetplusplus_key(key: str, depth: int) -> str | None:
    # smp's node x_{d}_{l} reads at the (l+1)-th feature from the deepest: segzoo's skip level
    # i = depth - 2 - l (shallow 0 to deep), column j = l + 1 - d; x_0_{depth-1} is the full-resolution block
    m = re.fullmatch(r"decoder\.blocks\.x_(\d+)_(\d+)\.conv([12])\.(\d+\..+)", key)
    if not m:
        return head_key(key)
    d, layer, conv, rest = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    if layer == depth - 1 and d == 0:
        return f"head.blocks.{conv}.{rest}"
    if d <= layer < depth - 1:
        return f"decoder.nodes.x{depth - 2 - layer}_{layer + 1 - d}.block.{conv - 1}.{rest}"
    return None


_PAB = {"center_conv": "query", "top_conv": "key", "bottom_conv": "value", "out_conv": "out"}
_MFAB = {"hl_conv": "high", "SE_hl": "gate_high", "SE_ll": "gate_low", "conv1": "block.0", "conv2": "block.1"}


def _manet_key(key: str, depth: int) -> str | None:
    # smp's blocks and segzoo's both run deep to shallow; smp's last one (no skip) is segzoo's head block
    m = re.fullmatch(r"decoder\.center\.(\w+)\.(weight|bias)", key)
    if m:
        return f"decoder.attention.{_PAB[m.group(1)]}.{m.group(2)}" if m.group(1) in _PAB else None
    m = re.fullmatch(r"decoder\.blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)", key)
    if not m:
        return head_key(key)
    block, part, index, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
    if block == depth - 1:
        return f"head.blocks.{part[-1]}.{index}.{rest}" if part in ("conv1", "conv2") else None
    if block > depth - 1 or part not in _MFAB:
        return None
    if part.startswith("SE_"):  # smp's gate: pool, conv, ReLU, conv, sigmoid; segzoo's pools in forward
        return f"decoder.blocks.{block}.{_MFAB[part]}.{index - 1}.{rest}" if index in (1, 3) else None
    return f"decoder.blocks.{block}.{_MFAB[part]}.{index}.{rest}"


def _upernet_key(key: str, depth: int) -> str | None:
    # smp's FPN blocks run deep to shallow (1/16 first); segzoo's are indexed shallow (1/4) to deep
    rules = ((r"decoder\.feature_norms\.(\d+)\.(weight|bias)", "decoder.feature_norms.{}.{}", False),
             (r"decoder\.psp\.blocks\.(\d+)\.1\.(\d+\..+)", "decoder.ppm.{}.conv.{}", False),
             (r"decoder\.psp\.out_conv\.()(\d+\..+)", "decoder.ppm_fuse{}.{}", False),
             (r"decoder\.fpn_lateral_blocks\.(\d+)\.conv_norm_relu\.(\d+\..+)", "decoder.laterals.{}.{}", True),
             (r"decoder\.fpn_conv_blocks\.(\d+)\.(\d+\..+)", "decoder.convs.{}.{}", True),
             (r"decoder\.fusion_block\.()(\d+\..+)", "decoder.fuse{}.{}", False))
    for pattern, target, reverse in rules:
        m = re.fullmatch(pattern, key)
        if m:
            index = m.group(1)
            if reverse:
                if int(index) > depth - 3:
                    return None
                index = str(depth - 3 - int(index))
            return target.format(index, m.group(2))
    return head_key(key)


#: smp class -> (smp key, encoder_depth) -> segzoo key (``None``: does not map), for the decoder and heads
KEYS: dict[str, Callable[[str, int], str | None]] = {
    "UnetPlusPlus": _unetplusplus_key,
    "UPerNet": _upernet_key,
    "MAnet": _manet_key,
}





def _infer_unetplusplus(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    attention = next((k for k in sd if re.match(r"decoder\.blocks\.x_\d+_\d+\.attention", k)), None)
    if attention:
        raise CheckpointError(f"smp UnetPlusPlus key {attention!r} does not map onto segzoo: "
                              f"decoder_attention_type='scse' has no segzoo twin (None maps)")
    layers = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"decoder\.blocks\.x_0_(\d+)\.conv1\.0\.weight", k)))
    if not layers:
        return aux_params(sd)
    widths = [size(sd, f"decoder.blocks.x_0_{layer}.conv1.0.weight") for layer in layers]
    return {"encoder_depth": len(widths), "decoder_channels": widths, **aux_params(sd),
            "decoder_use_norm": decoder_norm(sd, "UnetPlusPlus", "decoder.blocks.x_0_0.conv1")}


def _infer_upernet(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    found = aux_params(sd)
    if "decoder.fusion_block.0.weight" not in sd:
        return found
    levels = len({k.split(".")[2] for k in sd if k.startswith("decoder.feature_norms.")})
    return {**found, "decoder_channels": size(sd, "decoder.fusion_block.0.weight"),
            "decoder_use_norm": decoder_norm(sd, "UPerNet", "decoder.fusion_block"),
            **({"encoder_depth": levels + 1} if levels else {})}


def _infer_manet(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    found = aux_params(sd)
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"decoder\.blocks\.(\d+)\.conv1\.0\.weight", k))})
    if "decoder.center.top_conv.weight" not in sd or not blocks:
        return found
    return {**found, "encoder_depth": len(blocks), "decoder_pab_channels": size(sd, "decoder.center.top_conv.weight"),
            "decoder_channels": [size(sd, f"decoder.blocks.{b}.conv1.0.weight") for b in blocks],
            "decoder_use_norm": decoder_norm(sd, "MAnet", "decoder.blocks.0.conv1")}


#: smp class -> whether a state dict's keys are that class's (for ``from_smp`` without ``arch=``)
GUESS: dict[str, Callable[[Mapping[str, torch.Tensor]], bool]] = {
    "UnetPlusPlus": lambda sd: any(re.match(r"decoder\.blocks\.x_\d+_\d+\.", k) for k in sd),
    "UPerNet": lambda sd: "decoder.fusion_block.0.weight" in sd and "decoder.psp.out_conv.0.weight" in sd,
    "MAnet": lambda sd: "decoder.center.top_conv.weight" in sd,
}

#: smp class -> the smp arguments its state dict's keys and shapes tell
INFER: dict[str, Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]] = {
    "UnetPlusPlus": _infer_unetplusplus,
    "UPerNet": _infer_upernet,
    "MAnet": _infer_manet,
}
