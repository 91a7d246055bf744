"""Checkpoint files: atomic writes and safe reads.

A segzoo checkpoint is a ``dict`` of plain data (tensors, numbers, strings, lists,
dicts) written with :func:`save_checkpoint` and read with :func:`load_checkpoint`,
which uses ``torch.load(weights_only=True)``: loading never runs code from the file.

Keys written by the trainer:

- ``model_state_dict``: plain parameter names (no ``module.`` / ``_orig_mod.`` prefixes)
- ``model_spec``: ``{"name": registry name, "kwargs": {...}}`` or ``None`` for models
  that are not in the registry (custom encoders); see :mod:`segzoo.models.registry`
- ``epoch``, ``stage``, ``valid_metrics``, ``epoch_metrics``
- in ``*_full.pth`` files also ``optimizer_state_dict``, ``scheduler_state_dict``,
  ``criterion_state_dict`` and the trainer's resume state.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segzoo.errors import CheckpointError

_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A process killed at any moment leaves either the previous file or the new one,
    never a truncated file.

    Args:
        obj: the checkpoint dict (plain data only, so it loads with ``weights_only=True``).
        path: destination file; its folder is created if needed.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: the ``.pth`` file.
        map_location: where tensors are loaded (default CPU).

    Returns:
        The checkpoint dict. A bare state dict (a file with only tensors) is returned
        as ``{"model_state_dict": ...}``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is truncated, not a torch file, holds objects other
            than plain data (refused, never unpickled), or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"({first[:200]}); segzoo loads checkpoints with weights_only=True"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        # KeyError/IndexError: the weights-only unpickler reading bytes that are not a pickle
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a torch file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    if "model_state_dict" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {"model_state_dict": obj}
        raise CheckpointError(f"checkpoint {path} has no 'model_state_dict' (keys: {sorted(obj)[:10]})")
    return obj


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes from keys."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
            key = key.replace("._orig_mod.", ".")
        out[key] = value
    return out


def resolve_checkpoint(logdir_or_file: str | os.PathLike, checkpoint: str = "best") -> Path:
    """Find a checkpoint file from a log directory and a checkpoint name.

    Args:
        logdir_or_file: a trainer log directory (holding ``checkpoints/``) or a ``.pth`` file.
        checkpoint: ``best``, ``last``, ``{stage}.{epoch}`` (e.g. ``stage1.3``), or a path.
            Ignored when ``logdir_or_file`` is a file.

    Returns:
        The path of an existing checkpoint file.

    Raises:
        FileNotFoundError: the log directory or the named checkpoint does not exist;
            the message lists the checkpoints that do.
    """
    base = Path(logdir_or_file)
    if base.is_file():
        return base
    if not base.exists():
        raise FileNotFoundError(f"no such log directory or checkpoint file: {base}")
    as_path = Path(checkpoint)
    if as_path.suffix == ".pth" and as_path.is_file():
        return as_path
    folder = base / "checkpoints"
    candidate = folder / (checkpoint if checkpoint.endswith(".pth") else f"{checkpoint}.pth")
    if candidate.is_file():
        return candidate
    available = sorted(p.stem for p in folder.glob("*.pth")) if folder.is_dir() else []
    listed = ", ".join(available) if available else "none"
    raise FileNotFoundError(f"checkpoint {checkpoint!r} not found in {folder} (available: {listed})")
