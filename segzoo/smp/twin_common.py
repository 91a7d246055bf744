"""What the smp twin modules share: reading a size from an smp state dict (a crafted file is one line, not an
IndexError), the aux head's arguments, the decoder's norm, and the segmentation / aux head keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from segzoo.errors import CheckpointError

_SMP_HEAD_CLASSIFIER = re.compile(r"segmentation_head\.0\.(weight|bias)")
_SMP_AUX = re.compile(r"classification_head\.3\.(weight|bias)")  # aux_params: segzoo's keys are the same
AUX_WEIGHT = "classification_head.3.weight"


def size(sd: Mapping[str, Any], key: str, dim: int = 0) -> int:
    """``sd[key].shape[dim]`` (0: a layer's output channels, 1: its input channels).

    Raises:
        CheckpointError: ``key`` is missing, not a tensor, or has no dimension ``dim`` (one line naming it).
    """
    value = sd.get(key)
    if not isinstance(value, torch.Tensor) or value.dim() <= dim:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"smp key {key!r} has shape {shape}: not a layer's weight with {dim + 1} or more "
                              f"dimensions")
    return int(value.shape[dim])


def aux_params(sd: Mapping[str, Any]) -> dict[str, Any]:
    """smp's ``aux_params`` the classification head's weight tells (``{}`` without one)."""
    return {"aux_params": {"classes": size(sd, AUX_WEIGHT)}} if AUX_WEIGHT in sd else {}


def decoder_norm(sd: Mapping[str, Any], name: str, prefix: str) -> str:
    """smp's ``decoder_use_norm`` of the conv-norm-ReLU at ``prefix`` (keys ``prefix.0.*``, ``prefix.1.*``) of an
    smp ``name`` model: ``"batchnorm"`` or ``"identity"``.

    Raises:
        CheckpointError: another norm (layernorm, instancenorm, inplace): no segzoo twin.
    """
    if f"{prefix}.1.running_mean" in sd:
        return "batchnorm"
    if f"{prefix}.0.bias" in sd:
        return "identity"
    key = next((k for k in sd if k.startswith(f"{prefix}.1.")), f"{prefix}.1")
    raise CheckpointError(f"smp {name} key {key!r} does not map onto segzoo: its decoder_use_norm is neither "
                          f"'batchnorm' nor 'identity' (segzoo has a twin for those)")


def head_key(key: str) -> str | None:
    """segzoo's key of smp's segmentation head conv or aux head key; ``None`` for other keys."""
    m = _SMP_HEAD_CLASSIFIER.fullmatch(key)
    if m:
        return f"head.classifier.{m.group(1)}"
    return key if _SMP_AUX.fullmatch(key) else None
