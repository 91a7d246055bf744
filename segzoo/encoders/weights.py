"""The one place where encoder weights are fetched or read.

Modules are built first and weights loaded after (torchvision's way). Pretrained
ImageNet weights come from torchvision's weights API: the torch hub cache is read
first (``$TORCH_HOME/hub/checkpoints``), then a download is tried unless
``SEGZOO_OFFLINE=1``; when neither works one :class:`WeightsUnavailableError`
names the cache path and the local-file alternative in the form that works
(``encoder_params=dict(state_dict=...)`` for a model). timm's weights (:class:`~segzoo.encoders.TimmEncoder`)
follow ``SEGZOO_OFFLINE`` too: the Hugging Face / torch hub caches are looked up first and the
hub is put offline for the call, so nothing is requested from the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
import torchvision

from segzoo.checkpoint import load_checkpoint
from segzoo.errors import CheckpointError, WeightsUnavailableError, short_repr

StateDictSource = str | os.PathLike | Mapping[str, torch.Tensor]


def hub_cache_file(url: str) -> Path:
    """Where torch's hub cache keeps the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def torchvision_weights(arch: str):
    """torchvision's default (best) ImageNet weights enum member for ``arch``."""
    return torchvision.models.get_model_weights(arch).DEFAULT


def offline() -> bool:
    """Whether ``SEGZOO_OFFLINE`` is set (to anything but ``""`` or ``"0"``): no weights are downloaded."""
    return os.environ.get("SEGZOO_OFFLINE", "") not in ("", "0")


def local_weights_hint(arch: str) -> str:
    """How to load torchvision's ``arch`` weights from a local file, for a model and for an encoder."""
    path = f"path/to/{arch}.pth"
    return (f"pass a local copy (a torch.save(torchvision.models.{arch}().state_dict()) file) as "
            f"encoder_params=dict(state_dict={path!r}) to a Resnet* model (state_dict= of ResnetEncoder), "
            f"or pretrained=False")


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
            f"downloaded; put torchvision's file there, or {local_weights_hint(arch)}")
    if offline():
        raise WeightsUnavailableError(hint + " (SEGZOO_OFFLINE is set)")
    try:
        return dict(weights.get_state_dict(progress=False, check_hash=True))
    except Exception as exc:  # urllib/SSL/OS errors differ by platform: all mean "not available"
        raise WeightsUnavailableError(f"{hint} ({type(exc).__name__}: {exc})") from exc


def timm_local_weights(name: str, timm_kwargs: Mapping[str, object]) -> tuple[bool, str]:
    """Whether timm's pretrained weights for ``name`` are on this machine, and where they were looked for.

    A ``pretrained_cfg_overlay`` with a ``file`` (or ``state_dict``) is local; otherwise the file
    timm would fetch is looked up in the Hugging Face cache (``hf_hub_id``) and in the torch hub
    cache (``url``), without any network request.

    Returns:
        ``(True, the file)`` or ``(False, "the Hugging Face cache ... and the torch hub cache ...")``.
    """
    import timm.models

    overlay = timm_kwargs.get("pretrained_cfg_overlay") or {}
    if isinstance(overlay, Mapping) and (overlay.get("file") or overlay.get("state_dict") is not None):
        return True, str(overlay.get("file") or "the given state_dict")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False, f"timm's pretrained configs (it has none for {name!r})"
    cache_dir = timm_kwargs.get("cache_dir")
    places = []
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import constants, try_to_load_from_cache
        except ImportError:
            constants = None
        if constants is not None:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            for filename in names:
                hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision or None)
                if isinstance(hit, str):
                    return True, hit
            places.append(f"the Hugging Face cache {cache_dir or constants.HF_HUB_CACHE} (repo {repo})")
    if cfg.url:
        cached = Path(cache_dir) / os.path.basename(cfg.url) if cache_dir else hub_cache_file(cfg.url)
        if cached.is_file():
            return True, str(cached)
        places.append(f"the torch hub cache ({cached})")
    return False, " or ".join(places) or f"any cache (timm has no weights file for {name!r})"


def timm_weights_hint(name: str, where: str) -> str:
    """The one error line for timm weights of ``name`` that are not in ``where``, with the local-file alternative."""
    return (f"pretrained timm weights for {name!r} are not in {where}; copy them there, or pass a local file: "
            f"TimmEncoder({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='path/to/model.safetensors'))"
            f", or pretrained=False")


def timm_weights_access(name: str, pretrained: bool, timm_kwargs: Mapping[str, object],
                        source: str | None = None) -> tuple[contextlib.AbstractContextManager, str, str | None]:
    """segzoo's rules for where a timm model's weights may come from, checked before it is built.

    A local weights file (``pretrained_cfg_overlay=dict(file=...)``) must exist; with ``SEGZOO_OFFLINE``
    set, a registry model's pretrained weights must already be in a cache (one error naming where it
    looked and the local-file form), and an ``hf-hub:`` model (``source``) is read from the cache only.

    Args:
        name: the timm model name.
        pretrained: whether pretrained weights are asked for.
        timm_kwargs: the other ``timm.create_model`` arguments.
        source: timm's source of the name (``"hf-hub"``, ``"local-dir"``) or ``None`` for a registry name.

    Returns:
        ``(context, where, local_file)``: the context to build the model in (no network when offline),
        where the weights were looked for (for messages), and the local weights file or ``None``.

    Raises:
        FileNotFoundError: the local weights file does not exist.
        WeightsUnavailableError: offline, and the weights are in no cache.
    """
    where = "the Hugging Face / torch hub caches"
    overlay = timm_kwargs.get("pretrained_cfg_overlay")
    local_file = overlay.get("file") if isinstance(overlay, dict) else None
    if pretrained and local_file and not os.path.isfile(local_file):
        raise FileNotFoundError(f"no such weights file: {local_file} (pretrained_cfg_overlay file of timm "
                                f"model {name!r})")
    # an hf-hub: model's config comes from the hub even without weights: offline, from the cache only
    stay_offline = (pretrained or source == "hf-hub") and offline()
    if stay_offline and source is None:  # look in the caches first: no network request, no retries
        local, where = timm_local_weights(name, timm_kwargs)
        if not local:
            raise WeightsUnavailableError(timm_weights_hint(name, where) + " (SEGZOO_OFFLINE is set)")
    return (hub_offline() if stay_offline else contextlib.nullcontext()), where, local_file


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def timm_missing_keys() -> Iterator[list[str]]:
    """Within the block, collect the weight names timm's pretrained loading left at random init.

    timm loads a ``features_only`` model's weights leniently and only logs (at INFO) the keys a file
    lacked; the yielded list receives them. timm's log records are passed on to its parent loggers
    as before (those its level lets through).
    """
    logger = logging.getLogger("timm.models._builder")
    handler, missing = _Records(), []
    level, propagate, effective = logger.level, logger.propagate, logger.getEffectiveLevel()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield missing
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        for record in handler.records:
            match = re.match(r"Missing keys \((.*?)\) discovered", record.getMessage())
            if match:
                missing.extend(k.strip() for k in match.group(1).split(","))
            if record.levelno >= effective and propagate and logger.parent is not None:
                logger.parent.handle(record)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Within the block the Hugging Face hub makes no request (``HF_HUB_OFFLINE``): cached files only.

    Restores the previous setting (environment variable and ``huggingface_hub.constants``) after.
    """
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before, env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


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


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "int" if dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) else str(dtype)


def lossless_cast(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether a checkpoint tensor of dtype ``src`` may be loaded into a ``dst`` parameter or buffer.

    Only casts that keep every value are allowed: the same kind of number (bool, integer, float,
    complex) and ``dst`` holds all of ``src`` (float16/bfloat16 -> float32/float64, int32 -> int64).
    An int8 checkpoint into float parameters, float64 into float32, float into an integer
    buffer are all refused: PyTorch's ``load_state_dict`` would silently cast them.
    """
    if src == dst:
        return True
    return _kind(src) == _kind(dst) in ("int", "float", "complex") and torch.promote_types(src, dst) == dst


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _bridge_hint(own: Mapping[str, torch.Tensor], unexpected: list[str]) -> str:
    """The fix for weights of a model saved with the bridge generic models once added to every encoder."""
    if any(k.startswith("bridge.") for k in unexpected) and not any(k.startswith("bridge.") for k in own) \
            and not any(k.startswith("encoder.stages.") for k in unexpected):  # not a UnetEncoder model's weights
        return (" (these weights have a bridge, which generic models no longer add to a timm or custom encoder "
                "unless asked: build the model with bridge_params={})")
    return ""


def check_weights(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], what: str,
                  source: str | os.PathLike | None = None, ignore_prefixes: tuple[str, ...] = (),
                  hint: str = "") -> None:
    """Check that ``state_dict`` fits ``own`` (a module's state dict, meta tensors are fine) exactly.

    Refused, in one :class:`CheckpointError` line: missing or unexpected keys, other shapes,
    dtypes that would be cast with a loss (see :func:`lossless_cast`), and NaN/Inf values.

    Args:
        own: the target module's ``state_dict()`` (only names, shapes and dtypes are used).
        state_dict: the weights to load.
        what: the target, e.g. ``"the model Unet"``.
        source: where the weights come from (a file), named in the message.
        ignore_prefixes: keys starting with these are ignored on both sides.
        hint: appended to the message of a key/shape mismatch.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in own.items() if not k.startswith(ignore_prefixes)}
    origin = f"weights in {source}" if source is not None else "weights"
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{origin} have non-tensor entries: {[short_repr(k, 60) for k in bad[:5]]}")
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    common = [k for k in own if k in sd]
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in common if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            # the file's own names (maybe crafted: long, with newlines): each quoted once, cut to 60 characters
            shown = ", ".join(short_repr(k if isinstance(k, str) else str(k), 60) for k in unexpected[:3])
            parts.append(f"{len(unexpected)} unexpected keys [{shown}]{' ...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (checkpoint vs model) {shapes[:2]}")
        raise CheckpointError(f"{origin} do not fit {what}: " + "; ".join(parts) + _bridge_hint(own, unexpected) + hint)
    dtypes = [k for k in common if not lossless_cast(sd[k].dtype, own[k].dtype)]
    if dtypes:
        k = dtypes[0]
        raise CheckpointError(
            f"{origin} do not fit {what}: {len(dtypes)} tensors of another dtype, e.g. {k!r} is "
            f"{_name(sd[k].dtype)} in the checkpoint but {_name(own[k].dtype)} in the model; refusing a lossy "
            f"cast (only float16/bfloat16 -> float32 and integer widening are done); convert it yourself")
    for k in common:
        v = sd[k]
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            count = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"{origin} hold NaN/Inf values: {k!r} has {count} of {v.numel()} non-finite; "
                                  f"the run probably diverged: use an earlier checkpoint")


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
              ignore_prefixes: tuple[str, ...] = (), source: str | os.PathLike | None = None,
              hint: str = "") -> None:
    """Load ``state_dict`` strictly: the one weight loader of segzoo (checkpoints, resume, pretrained).

    Everything :func:`check_weights` refuses raises one :class:`CheckpointError` line naming the
    key and the offending shape / dtype / values, before anything is copied; float16 or bfloat16
    weights are widened into float32 parameters (lossless). Keys starting with ``ignore_prefixes``
    (e.g. a classifier ``fc.``) are ignored on both sides.
    """
    check_weights(module.state_dict(), state_dict, what, source, ignore_prefixes, hint)
    sd = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    module.load_state_dict(sd, strict=not ignore_prefixes)
