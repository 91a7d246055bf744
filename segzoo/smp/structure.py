"""``structure="smp"`` of the front door: segzoo's part arguments that compute smp 0.6's exact decoder and head.

The table :data:`SMP_STRUCTURES` (smp class -> a function of the smp arguments); the key renaming and loading
of smp's weights onto these models is :mod:`segzoo.smp.statedict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from segzoo.smp import twin_deeplab_pan, twin_linknet_fpn_psp, twin_segformer_dpt, twin_unetpp_manet_upernet

__all__ = ["SMP_STRUCTURES", "smp_structure", "smp_handled"]

_NORMS = {"batchnorm": "bn", True: "bn", "identity": "identity", False: "identity"}


def _unet_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """segzoo's decoder/head arguments that compute smp's Unet (``args``: the smp arguments)."""
    widths = [int(c) for c in args["decoder_channels"]]
    if len(widths) != args["encoder_depth"]:
        raise ValueError(f"segzoo.smp.Unet: decoder_channels {widths} must give one width per encoder stage "
                         f"(encoder_depth={args['encoder_depth']}), as smp")
    if args["decoder_use_norm"] not in _NORMS:
        raise ValueError(f"segzoo.smp.Unet(structure='smp'): decoder_use_norm={args['decoder_use_norm']!r} "
                         f"is not available: use one of {list(_NORMS)}")
    norm, mode = _NORMS[args["decoder_use_norm"]], str(args["decoder_interpolation"])
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"segzoo.smp.Unet(structure='smp'): decoder_interpolation={mode!r} is not available: "
                         f"use 'nearest' or 'bilinear'")
    decoder = {"channels": widths[:-1][::-1], "complexity": 1, "upsample": mode, "norm": norm}
    # smp's last block (no skip, at full resolution) is segzoo's head upsample block; smp's head is a 3x3 conv
    head = {"num_upsample_blocks": 1, "block_channels": widths[-1], "block_convs": 2, "kernel_size": 3,
            "norm": norm, "upsample": mode}
    return {"encoder": {}, "decoder": decoder, "head": head}


#: smp class -> the segzoo part arguments of ``structure="smp"`` (from the smp arguments)
SMP_STRUCTURES: dict[str, Callable[[Mapping[str, Any]], dict[str, dict[str, Any]]]] = {
    "Unet": _unet_structure,
    **twin_linknet_fpn_psp.STRUCTURES,  # Linknet, FPN, PSPNet
    **twin_deeplab_pan.STRUCTURES,  # DeepLabV3, DeepLabV3Plus, PAN
    **twin_unetpp_manet_upernet.STRUCTURES,  # UnetPlusPlus, MAnet, UPerNet
    "Segformer": twin_segformer_dpt.segformer_structure,
    "DPT": twin_segformer_dpt.dpt_structure,
}


def smp_handled(name: str) -> frozenset[str]:
    """The smp arguments ``structure="smp"`` of ``name`` reads itself (its function's ``handles``): the front
    door lets their non-default values through to it instead of mapping or refusing them."""
    return frozenset(getattr(SMP_STRUCTURES.get(name), "handles", ()))


def smp_structure(name: str, structure: str, args: Mapping[str, Any],
                  parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The part arguments of the front door's ``structure=`` (``"segzoo"``: ``parts`` unchanged; ``"smp"``).

    Raises:
        ValueError: an unknown ``structure``, or ``"smp"`` for an architecture or encoder without it.
    """
    if structure == "segzoo":
        return parts
    if structure != "smp":
        raise ValueError(f"segzoo.smp.{name}: structure must be 'segzoo' or 'smp', got {structure!r}")
    if name not in SMP_STRUCTURES:
        raise ValueError(f"segzoo.smp.{name}: structure='smp' is not available for {name} yet "
                         f"(it is for {sorted(SMP_STRUCTURES)})")
    encoder = args.get("encoder_name")
    # ResNets and timm CNNs (strides 2 ... 32) for every class; the classes' own encoders (MiT, ViT) there
    problem = twin_segformer_dpt.smp_encoder_problem(name, encoder, args.get("encoder_depth", 5))
    if problem:
        raise ValueError(f"segzoo.smp.{name}: structure='smp' {problem}, got encoder_name={encoder!r}")
    return SMP_STRUCTURES[name](args)
