"""The one place where encoder weights are fetched or read.

Modules are built first and weights loaded after (torchvision's way). Pretrained
ImageNet weights come from torchvision's weights API: the torch hub cache is read
first (``$TORCH_HOME/hub/checkpoints``), then a download is tried unless
``SEGZOO_OFFLINE=1``; when neither works one :class:`WeightsUnavailableError`
names the cache path and the ``state_dict=`` alternative.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision

from segzoo.checkpoint import load_checkpoint
from segzoo.errors import CheckpointError, WeightsUnavailableError

StateDictSource = str | os.PathLike | Mapping[str, torch.Tensor]


def hub_cache_file(url: str) -> Path:
    """Where torch's hub cache keeps the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def torchvision_weights(arch: str):
    """torchvision's default (best) ImageNet weights enum member for ``arch``."""
    return torchvision.models.get_model_weights(arch).DEFAULT


def pretrained_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """Return torchvision's ImageNet state dict for ``arch`` (hub cache first, then download).

    Raises:
        WeightsUnavailableError: not cached and cannot be downloaded (offline).
    """
    weights = torchvision_weights(arch)
    cached = hub_cache_file(weights.url)
    if cached.is_file():
        return read_state_dict(cached)
    hint = (f"pretrained weights for {arch} are not in the torch hub cache ({cached}) and could not be "
            f"downloaded; put torchvision's file there, or pass state_dict='path/to/{arch}.pth' "
            f"(a torch.save(torchvision.models.{arch}().state_dict()) file), or pretrained=False")
    if os.environ.get("SEGZOO_OFFLINE", "") not in ("", "0"):
        raise WeightsUnavailableError(hint + " (SEGZOO_OFFLINE is set)")
    try:
        return dict(weights.get_state_dict(progress=False, check_hash=True))
    except Exception as exc:  # urllib/SSL/OS errors differ by platform: all mean "not available"
        raise WeightsUnavailableError(f"{hint} ({type(exc).__name__}: {exc})") from exc


def read_state_dict(source: StateDictSource) -> dict[str, torch.Tensor]:
    """Read a state dict from a path (``weights_only=True``) or return a copy of a mapping.

    A checkpoint dict with ``model_state_dict`` or ``state_dict`` is unwrapped.

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointError: the file is not a readable torch file of tensors.
        TypeError: ``source`` is neither a path nor a mapping.
    """
    if isinstance(source, (str, os.PathLike)):
        obj = load_checkpoint(source)["model_state_dict"]
    elif isinstance(source, Mapping):
        obj = dict(source)
        for key in ("model_state_dict", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = dict(obj[key])
    else:
        raise TypeError(f"state_dict must be a path or a dict of tensors, got {type(source).__name__}")
    if isinstance(obj.get("state_dict"), Mapping):
        obj = dict(obj["state_dict"])
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"state dict has non-tensor entries: {bad[:5]}")
    return obj


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt an RGB stem kernel (O, 3, k, k) to ``in_channels`` inputs.

    - 1 channel: the sum of the RGB kernels (a grey image gives the RGB response).
    - C > 1: the RGB kernels cycled (R, G, B, R, ...) and scaled by 3 / C, keeping the
      stem's output scale about the same (exactly the same for grey inputs when C is a
      multiple of 3).

    Returns:
        Tensor (O, in_channels, k, k).
    """
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / in_channels)


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state_dict`` strictly, naming missing/unexpected/mis-shaped keys on failure.

    Keys starting with ``ignore_prefixes`` (e.g. a classifier ``fc.``) are ignored on both sides.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:3]}")
        raise CheckpointError(f"weights do not fit {what}: " + "; ".join(parts))
    module.load_state_dict(sd, strict=not ignore_prefixes)
