"""Checkpoint files: atomic writes and safe reads.

A segzoo checkpoint is a ``dict`` of plain data (tensors, numbers, strings, lists,
dicts) written with :func:`save_checkpoint` and read with :func:`load_checkpoint`,
which uses ``torch.load(weights_only=True)``: loading never runs code from the file.

What the trainer writes into a checkpoint (its keys, the format version) and how older formats
are migrated is :mod:`segzoo.checkpoint_format`; readers go through its ``read_checkpoint``.

Checksums: a checkpoint is a zip archive (``torch.save``'s format) whose every record (the pickled
dict, each tensor's bytes) carries the CRC-32 checksum of its content, computed when it was
written; :func:`checkpoint_bytes` always records them, and :func:`load_checkpoint` verifies
every record before torch reads the file, so a file damaged on disk or in a copy is refused in
one line naming it (torch itself does not check them: such a file would load with wrong
weights). The checksums live inside the file, so a checkpoint copied alone stays checkable,
``torch.load(weights_only=True)`` reads it as always, and checkpoints written before (by segzoo
or plain ``torch.save``) are checked too. Files without checksums (torch's legacy non-zip
format, or written with ``torch.serialization.set_crc32_options(False)``) load unchecked.
"""

from __future__ import annotations

import errno
import io
import lzma
import os
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.utils.serialization.config as torch_save_config

from segzoo.errors import CheckpointError, short_repr
from segzoo.fileio import os_error_reason, stat_input_file, write_bytes_atomic

_PREFIXES = ("module.", "_orig_mod.")


def checkpoint_bytes(obj: Mapping[str, Any]) -> bytes:
    """Serialize a checkpoint dict with ``torch.save`` into memory.

    Serializing once and writing the bytes (with :func:`segzoo.fileio.write_bytes_atomic`) to
    several files gives independent files with identical content; a full disk is then an
    ordinary ``OSError`` of the write, never an error deep inside torch's zip writer.
    """
    buf = io.BytesIO()
    with torch_save_config.patch({"save.compute_crc32": True}):  # the checksums load_checkpoint verifies
        torch.save(dict(obj), buf)
    return buf.getvalue()


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``obj`` to ``path`` atomically through :mod:`segzoo.fileio` (temp file, fsync, rename).

    A process killed at any moment leaves either the previous file or the new one,
    never a truncated file; each file written is its own inode.

    Args:
        obj: the checkpoint dict (plain data only, so it loads with ``weights_only=True``).
        path: destination file; its folder is created if needed.
        overwrite: replace an existing ``path`` (default, as the trainer does every epoch);
            without it an existing file is refused.

    Returns:
        The destination path.

    Raises:
        WriteError: the disk is full, the folder read-only...: one line naming ``path``;
            the previous file at ``path`` is left as it was and no temporary file remains.
        FileExistsError: ``path`` exists and ``overwrite`` is False, or another process
            replaced it meanwhile.
    """
    return write_bytes_atomic(path, checkpoint_bytes(obj), overwrite=overwrite)


def _unpickler_reason(message: str) -> str:
    """The line of torch's weights-only error that names what was refused (``Trying to load unsupported GLOBAL
    posix.system ...``, ``Unsupported operand 103``), not its first line (a note about torch 2.6's default)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    found = next((line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue"))),
                 None)
    return (found or (lines[0] if lines else "unpickling failed")).removeprefix("WeightsUnpickler error: ")


def read_torch_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict a torch file holds, read as :func:`load_checkpoint` reads (checksums, ``weights_only=True``).

    For files of other layouts (e.g. smp training scripts' ``{"state_dict": ...}``); segzoo checkpoints
    go through :func:`load_checkpoint`.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: damaged, not a torch file, objects other than plain data, or not a dict.
    """
    path = Path(path)
    size = stat_input_file(path, "checkpoint", CheckpointError, expected="expected a .pth file").st_size  # no FIFO...
    try:
        # one open file: the file whose checksums are verified is the one torch reads, even if a writer
        # replaces the path meanwhile (segzoo's writers rename a new file over it)
        with open(path, "rb") as f:
            size = _check_checkpoint_file(path, f)
            f.seek(0)
            with warnings.catch_warnings():  # a pickle another tool wrote: the error below says what matters
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                obj = torch.load(f, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(str(exc))
        if reason.startswith("Unsupported operand"):  # bytes that are not a pickle: no object was refused
            raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a torch file "
                                  f"({reason[:200]})") from exc
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"({reason[:200]}); segzoo loads checkpoints with weights_only=True"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {os_error_reason(exc)}") from exc
    except MemoryError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: it needs more memory than there is "
                              f"({size} bytes on disk)") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError,
            TypeError, AttributeError) as exc:
        # KeyError/IndexError/TypeError: the weights-only unpickler reading bytes that are not a pickle
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a torch file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
                              ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


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
        CheckpointError: the file is truncated, damaged (a record does not match its
            checksum), not a torch file, holds objects other than plain data (refused,
            never unpickled), or is not a dict.
    """
    path = Path(path)
    obj = read_torch_dict(path, map_location)
    if "model_state_dict" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {"model_state_dict": obj}
        keys = sorted(map(str, obj))
        raise CheckpointError(f"checkpoint {path} has no 'model_state_dict' "
                              f"(keys: {', '.join(short_repr(k, 40) for k in keys[:10])})")
    sd = obj["model_state_dict"]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"checkpoint {path}: model_state_dict is a {type(sd).__name__}, "
                              f"expected a dict of tensors")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: model_state_dict has {len(bad)} entries that are not "
                              f"name -> tensor, e.g. {short_repr(bad[0])}")
    return obj


# a torch zip checkpoint stores its entries uncompressed: what it expands to is about its size
_MAX_EXPANSION, _EXPANSION_SLACK = 2, 1 << 20


def _check_checkpoint_file(path: Path, f: BinaryIO) -> int:
    """Refuse what is not a checkpoint in the open file ``f`` (of ``path``) before torch reads it; returns its size."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it is not a torch file")
    try:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as zf:
                _check_archive(path, zf, size)
    except CheckpointError:
        raise
    # RuntimeError: an entry flagged encrypted; zlib / lzma errors: a compressed entry that does not decompress
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError, RuntimeError,
            zlib.error, lzma.LZMAError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a torch file "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {os_error_reason(exc)}") from exc
    return size


def _check_archive(path: Path, zf: zipfile.ZipFile, size: int) -> None:
    """Refuse TorchScript / .pt2 files and zip bombs, then verify each record against its CRC-32 checksum."""
    infos = zf.infolist()
    names = [info.filename for info in infos]
    if any(n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in names):
        raise CheckpointError(f"{path} is a TorchScript file, not a checkpoint; load it with torch.jit.load")
    if any(n.endswith("/archive_format") for n in names) or any(n.endswith("/models/model.json") for n in names):
        raise CheckpointError(f"{path} is a torch.export program (.pt2), not a checkpoint; "
                              f"load it with torch.export.load")
    expanded = sum(info.file_size for info in infos)
    if expanded > _MAX_EXPANSION * size + _EXPANSION_SLACK:
        raise CheckpointError(f"refusing to load {path}: its {size} bytes expand to {expanded} bytes "
                              f"(compressed entries; torch never writes those: a zip bomb?)")
    if not any(info.CRC for info in infos if info.file_size):
        return  # written with torch's checksums turned off: nothing to verify
    for info in infos:
        with zf.open(info) as record:  # zipfile checks the CRC-32 when the record has been read
            try:
                while record.read(1 << 22):
                    pass
            except zipfile.BadZipFile as exc:
                if "CRC" not in str(exc):
                    raise
                raise CheckpointError(
                    f"checkpoint {path} is damaged: its record {info.filename!r} does not match the checksum "
                    f"written with it (the file changed on disk or in a copy); use another checkpoint") from None


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
        if os.path.lexists(base):  # a dangling symbolic link or a loop
            try:
                os.stat(base)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise CheckpointError(f"cannot read {base}: {os_error_reason(exc)}") from None
            raise FileNotFoundError(f"{base} is a symbolic link to a missing file") from None
        raise FileNotFoundError(f"no such log directory or checkpoint file: {base}")
    if not base.is_dir():
        return base  # a pipe or a device: load_checkpoint names what it is
    as_path = Path(checkpoint)
    if as_path.suffix == ".pth" and as_path.is_file():
        return as_path
    folder = base / "checkpoints"
    candidate = folder / (checkpoint if checkpoint.endswith(".pth") else f"{checkpoint}.pth")
    if candidate.is_file():
        return candidate
    if not folder.is_dir():
        raise FileNotFoundError(f"{base} is a folder but not a log directory (no checkpoints/ in it); "
                                f"pass a log directory or a .pth file")
    available = sorted(p.stem for p in folder.glob("*.pth"))
    listed = ", ".join(available) if available else "none"
    raise FileNotFoundError(f"checkpoint {checkpoint!r} not found in {folder} (available: {listed})")
