"""smp 0.6's ``Segformer`` and ``DPT`` on segzoo's parts (``structure="smp"``), and smp's encoders that are not
ResNets: timm's (``"tu-<timm name>"``, smp's ``TimmUniversalEncoder`` / ``TimmViTEncoder``) and MiT (``"mit_b0"``
... ``"mit_b5"``, segzoo's :class:`~segzoo.encoders.mit.MixTransformerEncoder`).

Registered in :mod:`segzoo.smp.structure` (the part arguments) and :mod:`segzoo.smp.statedict` (the keys):

- Segformer: segzoo's ``SegformerDecoder`` with ``fuse="concat"`` (smp's per-level linear layers, resize,
  concatenation, 1x1 conv + BatchNorm + ReLU); on a ResNet or a timm CNN (strides 2..32) the stride-2 feature is
  used too, resized down to stride 4 (``min_stride=2, out_stride=4``); the head is a 1x1 conv and a x4 bilinear
  resize with aligned corners (smp's ``UpsamplingBilinear2d``). smp concatenates the levels deep to shallow and
  segzoo shallow to deep: the fusion conv's input channels are reordered when its weight is loaded.
- DPT: segzoo's ``ViTEncoder`` at smp's block indices (smp's ``int(N / depth * k) - 1``) with smp's readout
  (``decoder_readout``: the ``"cat"`` projection is segzoo's encoder's), ``DPTDecoder(align_corners=True,
  upsample_last=True)`` (smp fuses, resizes x2 with aligned corners and projects at every level, the finest too)
  and the head's 1x1 conv with a x2 resize with aligned corners (smp's ``DPTSegmentationHead``; its 3x3 conv +
  BatchNorm + ReLU is segzoo's decoder's ``out``).
- timm encoders: smp's keys are ``encoder.model.<timm's features_only keys>``, the same as segzoo's
  :class:`~segzoo.encoders.TimmEncoder`'s; smp's ViT encoder is timm's whole ViT, whose final norm, classifier
  and blocks after the deepest one used segzoo does not build (dropped).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from segzoo.encoders.mit import MIT_VARIANTS, mit_keys_from_smp
from segzoo.errors import CheckpointError
from segzoo.smp.twin_common import size

__all__ = ["dpt_key", "dpt_structure", "encoder_key", "infer_dpt", "infer_segformer", "prepare_dpt", "prepare_segformer",
           "segformer_key", "segformer_structure", "smp_encoder_problem", "smp_vit_indices", "timm_strides"]

Convert = Callable[[torch.Tensor], torch.Tensor]
_RESNETS = r"resnet(18|34|50|101|152)"


def timm_strides(name: str) -> list[int]:
    """The feature strides of timm model ``name`` built ``features_only`` (on the meta device: no weights)."""
    import timm

    from segzoo.encoders.timm_encoder import timm_name_error

    if not timm.is_model(timm.models.split_model_name_tag(name)[0]):
        raise timm_name_error(name)
    try:
        with torch.device("meta"):
            model = timm.create_model(name, features_only=True)
    except Exception as exc:  # an unknown name, a model without features_only: TimmEncoder names it later
        raise ValueError(f"timm model {name!r} cannot be built with features_only=True ({exc})") from None
    return [int(r) for r in model.feature_info.reduction()]


def _is_vit(encoder: str) -> bool:
    from segzoo.encoders.vit import is_plain_vit

    return encoder.startswith("tu-") and is_plain_vit(encoder[3:])


def smp_encoder_problem(name: str, encoder: Any, depth: int) -> str | None:
    """Why ``structure="smp"`` of smp class ``name`` cannot take ``encoder`` (``None``: it can).

    Every class takes smp's ResNets and timm CNNs with smp's usual strides 2, 4 ... 32 (``"tu-resnet18"``,
    ``"tu-test_resnet"``); Segformer also takes MiT (``"mit_b0"``...) and timm encoders starting at stride 4
    (ConvNeXt, Swin...); DPT takes timm's plain ViTs only (as smp).
    """
    if not isinstance(encoder, str):
        return "needs an encoder name"
    if name == "DPT":
        return None if _is_vit(encoder) else "needs a timm plain ViT encoder ('tu-vit_small_patch16_224', " \
                                                "'tu-test_vit'), as smp's DPT"
    if re.fullmatch(_RESNETS, encoder):
        return None
    if name == "Segformer" and encoder in MIT_VARIANTS:
        return None if depth == 5 else "takes MiT encoders at encoder_depth=5 only (segzoo's MiT has 4 stages)"
    if encoder.startswith("tu-") and not _is_vit(encoder):
        strides = timm_strides(encoder[3:])
        if strides == [2 ** (i + 1) for i in range(len(strides))]:
            return None
        if name == "Segformer" and strides == [2 ** (i + 2) for i in range(len(strides))]:
            return None
        return f"needs a timm encoder with strides 2, 4 ... 32 ({encoder!r} has {strides})"
    return "needs a ResNet encoder (resnet18 ... resnet152) or a timm CNN ('tu-resnet18')" + \
        (", or MiT ('mit_b0')" if name == "Segformer" else "")


def segformer_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """segzoo's encoder/decoder/head arguments that compute smp's Segformer (``args``: the smp arguments)."""
    encoder, depth = str(args["encoder_name"]), int(args["encoder_depth"])
    if depth < 3:
        raise ValueError(f"segzoo.smp.Segformer: encoder_depth must be >= 3, as smp, got {depth}")
    decoder = {"channels": int(args["decoder_segmentation_channels"]), "fuse": "concat"}
    parts: dict[str, dict[str, Any]] = {"encoder": {}, "decoder": decoder,
                                        "head": {"kernel_size": 1, "upsample": "bilinear", "align_corners": True}}
    if int(args["upsampling"]) != 4:
        raise ValueError(f"segzoo.smp.Segformer(structure='smp'): upsampling={args['upsampling']!r} is not "
                         f"available (segzoo's heads return the input's size): use smp's 4")
    if re.fullmatch(_RESNETS, encoder):  # smp uses the stem's stride-2 feature too, at stride 4
        parts["encoder"] = {"layers_indices": list(range(depth))}
        decoder.update(min_stride=2, out_stride=4)
    elif encoder.startswith("tu-") and timm_strides(encoder[3:])[0] == 2:
        decoder.update(min_stride=2, out_stride=4)
    elif encoder.startswith("tu-"):  # a stride-4-first timm encoder: smp's out_indices are range(depth - 1)
        parts["encoder"] = {"out_indices": list(range(depth - 1))}
    return parts


def smp_vit_indices(encoder: str, depth: int, indices: Any) -> list[int]:
    """The ViT blocks smp's DPT reads: ``indices`` (negatives counted from the end) or smp's uniform choice."""
    import timm

    with torch.device("meta"):
        blocks = len(timm.create_model(encoder[3:]).blocks)
    if indices is None:
        return [int(blocks / depth * k) - 1 for k in range(1, depth + 1)]
    chosen = [int(i) % blocks if -blocks <= int(i) < blocks else int(i) for i in indices]
    if len(chosen) != depth:
        raise ValueError(f"segzoo.smp.DPT: encoder_output_indices {list(indices)} must give encoder_depth={depth} "
                         f"block indices, as smp")
    return chosen


def dpt_structure(args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """segzoo's encoder/decoder/head arguments that compute smp's DPT (``args``: the smp arguments)."""
    depth, readout = int(args["encoder_depth"]), args["decoder_readout"]
    if not 1 <= depth <= 4:
        raise ValueError(f"segzoo.smp.DPT: encoder_depth must be in 1..4, got {depth}")
    if readout not in ("cat", "add", "ignore"):
        raise ValueError(f"segzoo.smp.DPT: decoder_readout must be 'cat', 'add' or 'ignore', got {readout!r}")
    widths = [int(c) for c in args["decoder_intermediate_channels"]]
    if len(widths) != depth:
        raise ValueError(f"segzoo.smp.DPT: decoder_intermediate_channels {widths} must give one width per token "
                         f"map (encoder_depth={depth}), as smp")
    encoder = {"out_indices": smp_vit_indices(str(args["encoder_name"]), depth, args["encoder_output_indices"]),
               "readout": readout}
    decoder = {"channels": widths, "fusion_channels": int(args["decoder_fusion_channels"]), "align_corners": True,
               "upsample_last": True}
    head = {"kernel_size": 1, "dropout": 0.1, "upsample": "bilinear", "align_corners": True}
    return {"encoder": encoder, "decoder": decoder, "head": head}


def _linear_to_conv(weight: torch.Tensor) -> torch.Tensor:
    return weight[:, :, None, None] if weight.dim() == 2 else weight


def _deep_first_to_shallow_first(weight: torch.Tensor) -> torch.Tensor:
    """smp's fusion conv weight (C, L * C, 1, 1) over levels concatenated deep to shallow, for segzoo's order."""
    if weight.dim() != 4 or weight.shape[0] == 0 or weight.shape[1] % weight.shape[0]:
        return weight  # not smp's shape: the strict load names it
    return torch.cat(weight.split(weight.shape[0], dim=1)[::-1], dim=1)


def segformer_key(key: str, depth: int) -> str | tuple[str, Convert] | None:
    """segzoo's key of an smp Segformer decoder/head key (with a tensor conversion), ``None`` if it does not map.

    ``decoder.mlp_stage.{i}`` keys are expected shallow to deep, as :func:`prepare_segformer` renumbers them.
    """
    m = re.fullmatch(r"decoder\.mlp_stage\.(\d+)\.linear\.(weight|bias)", key)
    if m:  # a Linear (C, C_i) -> a 1x1 conv (C, C_i, 1, 1)
        return f"decoder.linears.{m.group(1)}.{m.group(2)}", _linear_to_conv
    m = re.fullmatch(r"decoder\.fuse_stage\.([01])\.(.+)", key)
    if m:
        return f"decoder.fuse.{m.group(1)}.{m.group(2)}", \
            _deep_first_to_shallow_first if m.group(1) == "0" else _same
    m = re.fullmatch(r"segmentation_head\.0\.(weight|bias)", key)
    return f"head.classifier.{m.group(1)}" if m else None


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def prepare_segformer(sd: Mapping[str, torch.Tensor], arguments: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``sd`` with smp's MLPs numbered shallow to deep (smp runs them deep to shallow: ``mlp_stage.0`` is the
    deepest level), as segzoo's linears."""
    indices = _sizes(sd, r"decoder\.mlp_stage\.(\d+)\.")
    levels = len(indices)
    if indices != list(range(levels)):  # a gap: renumbering would invent keys
        key = next(k for k in sd if re.match(rf"decoder\.mlp_stage\.{max(indices)}\.", k))
        raise CheckpointError(f"smp Segformer key {key!r} does not map onto segzoo: smp numbers its "
                              f"decoder.mlp_stage.* 0, 1, 2... without gaps (these: {indices})")
    out = {}
    for key, value in sd.items():
        m = re.match(r"decoder\.mlp_stage\.(\d+)\.", key)
        out[f"decoder.mlp_stage.{levels - 1 - int(m.group(1))}.{key[m.end():]}" if m else key] = value
    return out


def dpt_key(key: str, depth: int) -> str | None:
    """segzoo's key of an smp DPT key (its ViT encoder's too), ``None`` if it does not map."""
    if key.startswith("encoder.model."):
        return key
    m = re.fullmatch(r"decoder\.projection_blocks\.(\d+)\.project\.0\.(weight|bias)", key)
    if m:
        return f"encoder.project.{m.group(1)}.0.{m.group(2)}"
    m = re.fullmatch(r"decoder\.reassemble_blocks\.(\d+)\.(project_to_out_channel|upsample|project_to_feature_dim)"
                     r"\.(weight|bias)", key)
    if m:
        part = {"project_to_out_channel": "project", "upsample": "resample", "project_to_feature_dim": "out"}
        return f"decoder.reassemble.{m.group(1)}.{part[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"decoder\.fusion_blocks\.(\d+)\.(.+)", key)
    if m:  # smp's fusion block i runs coarse to fine: segzoo's level depth - 1 - i
        level, rest = depth - 1 - int(m.group(1)), m.group(2)
        unit = re.fullmatch(r"residual_conv_block([12])\.(conv|batch_norm)_([12])\.(.+)", rest)
        if unit:
            index = (1 if unit.group(3) == "1" else 4) + (unit.group(2) == "batch_norm")
            return f"decoder.units{unit.group(1)}.{level}.body.{index}.{unit.group(4)}"
        proj = re.fullmatch(r"project\.(weight|bias)", rest)
        if proj:
            return f"decoder.projects.{level - 1}.{proj.group(1)}" if level > 0 else \
                f"decoder.last_project.{proj.group(1)}"
        return None
    m = re.fullmatch(r"segmentation_head\.head\.([014])\.(.+)", key)
    if m:
        return f"decoder.out.{m.group(1)}.{m.group(2)}" if m.group(1) != "4" else f"head.classifier.{m.group(2)}"
    return None


def prepare_dpt(sd: Mapping[str, torch.Tensor], arguments: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``sd`` without the ViT weights segzoo does not build (final norm, classifier, blocks after the deepest used).

    Raises:
        CheckpointError: a readout that the keys contradict, or an ``aux_params`` head with a readout
            (smp's reads the raw token map, segzoo's the map after the readout).
    """
    depth = int(arguments.get("encoder_depth", 4))
    encoder = str(arguments.get("encoder_name", ""))
    readout = arguments.get("decoder_readout", "cat")
    has_projection = any(k.startswith("decoder.projection_blocks.") for k in sd)
    is_dpt = any(k.startswith("decoder.fusion_blocks.") for k in sd)  # else: the key mapping names a key
    if readout == "cat" and not has_projection and is_dpt and encoder:  # (no encoder: from_smp asks for it)
        key = next((k for k in sd if k.startswith("decoder.")), "decoder")
        raise CheckpointError(f"smp DPT key {key!r}: these weights have no 'cat' readout projection "
                              f"(decoder.projection_blocks.*): pass their decoder_readout ('add' or 'ignore')")
    aux = next((k for k in sd if k.startswith("classification_head.")), None)
    if aux and readout != "ignore":
        raise CheckpointError(f"smp DPT key {aux!r} does not map onto segzoo: smp's aux_params head reads the raw "
                              f"token map, segzoo's the map after the readout (maps with decoder_readout='ignore')")
    last = max(smp_vit_indices(encoder, depth, arguments.get("encoder_output_indices"))) if _is_vit(encoder) else None
    out = {}
    for key, value in sd.items():
        m = re.match(r"encoder\.model\.blocks\.(\d+)\.", key)
        if (m and last is not None and int(m.group(1)) > last) or re.match(r"encoder\.model\.(norm|fc_norm|head)\.",
                                                                             key):
            continue
        out[key] = value
    return out


def encoder_key(key: str, depth: int) -> str | None:
    """segzoo's key of an smp timm (``encoder.model.*``) or MiT (``encoder.patch_embed1...``) encoder key,
    ``None`` for another encoder's key."""
    if key.startswith("encoder.model."):
        return key
    inner = key[len("encoder."):] if key.startswith("encoder.") else ""
    if inner.startswith("head."):
        return ""  # smp's MiT keeps NVlabs' classifier: not used
    renamed = next(iter(mit_keys_from_smp({inner: torch.empty(0)})), inner) if inner else inner
    return f"encoder.{renamed}" if inner and renamed != inner else None


def _sizes(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m})


def infer_segformer(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """smp Segformer arguments the keys and shapes of ``sd`` tell (width, encoder depth, MiT variant)."""
    found: dict[str, Any] = {}
    if "decoder.fuse_stage.0.weight" in sd:
        found["decoder_segmentation_channels"] = size(sd, "decoder.fuse_stage.0.weight", 0)
    levels = len(_sizes(sd, r"decoder\.mlp_stage\.(\d+)\."))
    widths = tuple(size(sd, f"encoder.patch_embed{i}.proj.weight", 0) for i in range(1, 5)
                   if f"encoder.patch_embed{i}.proj.weight" in sd)
    depths = tuple(len(_sizes(sd, rf"encoder\.block{i}\.(\d+)\.")) for i in range(1, 5))
    mit = next((n for n, v in MIT_VARIANTS.items() if v.widths == widths and v.depths == depths), None)
    if mit:
        found.update(encoder_name=mit, in_channels=size(sd, "encoder.patch_embed1.proj.weight", 1))
    elif levels and not any(k.startswith("encoder.model.") for k in sd):
        found["encoder_depth"] = levels  # a ResNet: one level per stage, the stem's included
    return found


def infer_dpt(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """smp DPT arguments the keys and shapes of ``sd`` tell (depth, widths, readout, classes)."""
    found: dict[str, Any] = {}
    blocks = _sizes(sd, r"decoder\.reassemble_blocks\.(\d+)\.project_to_out_channel\.weight")
    if blocks:
        found["encoder_depth"] = len(blocks)
        found["decoder_intermediate_channels"] = [
            size(sd, f"decoder.reassemble_blocks.{i}.project_to_out_channel.weight", 0) for i in blocks]
        found["decoder_fusion_channels"] = size(sd, "decoder.reassemble_blocks.0.project_to_feature_dim.weight", 0)
    if any(k.startswith("decoder.projection_blocks.") for k in sd):
        found["decoder_readout"] = "cat"
    if "segmentation_head.head.4.weight" in sd:
        found["classes"] = size(sd, "segmentation_head.head.4.weight", 0)
    if "encoder.model.patch_embed.proj.weight" in sd:
        found["in_channels"] = size(sd, "encoder.model.patch_embed.proj.weight", 1)
    return found
