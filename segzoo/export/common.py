"""What every export format shares: sizes and example inputs, the output check, the check against eager.

Each format (:mod:`~segzoo.export.torchscript`, :mod:`~segzoo.export.onnx`,
:mod:`~segzoo.export.program`) serializes its artifact in memory, checks it with :func:`compare_with_eager`
and writes it with :func:`write_artifact` (one atomic write through :mod:`segzoo.fileio`).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.errors import SegzooError, install_hint
from segzoo.fileio import atomic_path, check_not_input, write_bytes_atomic, write_error
from segzoo.inference.metadata import model_metadata
from segzoo.loading import LoadedModel

DEFAULT_INPUT_SIZE = (256, 256)
TRACE_MODES = ("eval", "train")
FORMATS = ("onnx", "torchscript", "export")
# the TorchScript-based ONNX exporter of torch 2.14 goes down to opset 9, but segzoo models pad their
# input by amounts computed from its runtime size, and ONNX Pad takes non-constant pads only from opset 11
ONNX_OPSETS = (11, 20)
DEPRECATED = r".*(deprecated|Deprecat).*"  # warning filter of torch's deprecation notices


class ExportCheckError(SegzooError, RuntimeError):
    """An exported or traced model does not reproduce the eager model's outputs."""


class MissingDependencyError(SegzooError, RuntimeError):
    """An optional package needed for an export format is not installed."""


# ---- sizes and inputs ------------------------------------------------------------------------

def check_sizes(input_size: Sequence[int], batch_size: int) -> None:
    """Raise ValueError unless ``input_size`` is (H, W) of positive ints and ``batch_size`` >= 1."""
    if len(input_size) != 2 or not all(isinstance(s, int) and s > 0 for s in input_size):
        raise ValueError(f"input size must be two positive integers H W, got {tuple(input_size)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")


def check_opset(opset: Any) -> None:
    """Raise ValueError unless ``opset`` is an integer in :data:`ONNX_OPSETS`."""
    if not isinstance(opset, int) or not ONNX_OPSETS[0] <= opset <= ONNX_OPSETS[1]:
        raise ValueError(f"ONNX opset must be an integer in {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]}, got {opset!r}")


def size_multiple(model: nn.Module) -> int:
    """The model's ``size_multiple`` (inputs are padded to it), 1 when it does not say."""
    return int(getattr(model, "size_multiple", 1) or 1)


def example_input(model: nn.Module, input_size: Sequence[int] = DEFAULT_INPUT_SIZE, batch_size: int = 1,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """A random (batch_size, in_channels, H, W) input for ``model`` (3 channels if it does not say).

    Raises:
        ValueError: sizes that are not positive integers, or an input too large to allocate.
    """
    check_sizes(input_size, batch_size)
    channels = getattr(model, "in_channels", None) or 3
    gen = torch.Generator().manual_seed(0)
    shape = (batch_size, channels, *input_size)
    try:
        return torch.randn(*shape, generator=gen).to(device)
    except (RuntimeError, MemoryError) as exc:
        gib = batch_size * channels * input_size[0] * input_size[1] * 4 / 2**30
        raise ValueError(f"the example input {shape} needs {gib:.3g} GiB, more than can be allocated; "
                         f"use a smaller --input-size / --batch-size (the result works at other sizes)") from exc


def other_input(example: torch.Tensor, multiple: int = 1, same_batch: bool = False) -> torch.Tensor:
    """An input of another batch size and another H x W than ``example``, to catch frozen shapes.

    The new H, W stay multiples of ``multiple`` when it is above 1 and the example's are.
    """
    b, c, h, w = example.shape
    if multiple > 1 and h % multiple == 0 and w % multiple == 0:
        h2, w2 = h + multiple, w + 2 * multiple
    else:
        h2, w2 = h + 7, w + 13
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b if same_batch else b + 1, c, h2, w2, generator=gen).to(example.device)


def require(module: str, purpose: str) -> Any:
    """Import an optional package, or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{purpose} needs the {module!r} package: {install_hint('export')}") from exc


def checkpoint_metadata(loaded: LoadedModel) -> dict[str, Any]:
    """What exported files store besides the graph (normalization, model spec, classes, channels)."""
    return model_metadata(loaded.model, loaded.normalization, loaded.info.get("model_spec"))


# ---- the output file -------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it at ``path`` only if the block succeeds.

    :func:`segzoo.fileio.atomic_path` with ``overwrite=force``: a file another process wrote at
    ``path`` meanwhile is never replaced, and a failed write (disk full) is one WriteError line.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
        IsADirectoryError: ``path`` is a directory.
        WriteError: the write failed; nothing is left behind.
    """
    with atomic_path(path, overwrite=force, force_hint="--force (force=True)") as tmp:
        yield tmp


def check_output(out: str | os.PathLike, force: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse an output path before any work is done, in one line.

    Refused: an existing file without ``force``; a folder; one of ``inputs`` (never overwritten,
    even with ``force``); any file in the ``checkpoints/`` folder of an input checkpoint (that
    folder holds the run's checkpoints only: a ``.pth`` would be listed, and tried, as one, and
    ``segzoo train --force`` would refuse to replace the run); a parent that is a file; a file name
    longer than the file system allows.

    Raises:
        FileExistsError, IsADirectoryError, ValueError, WriteError.
    """
    out = Path(out)
    parent = next((p for p in out.parents if os.path.lexists(p)), None)
    try:
        name_max = os.pathconf(parent if parent is not None and parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if any(len(os.fsencode(part)) > name_max for part in out.parts):
        raise write_error(out, OSError(errno.ENAMETOOLONG, "name too long"))
    if parent is not None and not parent.is_dir():
        raise write_error(out, OSError(errno.ENOTDIR, "not a folder"))
    if out.is_dir():
        raise IsADirectoryError(f"output {out} is a folder, expected a file path")
    check_not_input(out, inputs)
    if os.path.lexists(out) and not force:
        raise FileExistsError(f"output {out} exists; pass --force to overwrite it")
    for src in map(Path, inputs):
        folder = src.parent
        if folder.name == "checkpoints" and folder.is_dir() and out.parent.is_dir() \
                and os.path.samefile(out.parent, folder):
            raise ValueError(f"output {out} is in the checkpoints folder {folder}, which holds the run's checkpoints "
                             f"only; choose another folder (default: the log directory's trace/)")
    return out


def write_artifact(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    """Write a serialized artifact atomically (the one write of every format).

    Artifacts are serialized in memory first: on a full disk torch's own file writers abort the
    process, while :func:`segzoo.fileio.write_bytes_atomic` raises one WriteError line.

    Raises:
        FileExistsError: ``path`` exists and not ``force``, or another process created or replaced
            it meanwhile (that file is kept).
        WriteError: the write failed; nothing is left behind.
    """
    return write_bytes_atomic(path, data, overwrite=force)


# ---- the check against the eager model ---------------------------------------------------------

def outputs_close(ref: Any, got: Any, rtol: float, atol: float) -> tuple[bool, float]:
    """Compare nested tensors; returns (close, largest absolute difference)."""
    if isinstance(ref, torch.Tensor):
        got = torch.as_tensor(got)
        if tuple(got.shape) != tuple(ref.shape):
            return False, float("inf")
        diff = (ref.detach().float().cpu() - got.detach().float().cpu()).abs()
        worst = float(diff.max()) if diff.numel() else 0.0
        scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
        return worst <= atol + rtol * scale, worst
    if isinstance(ref, (list, tuple)) and isinstance(got, (list, tuple)) and len(ref) == len(got):
        results = [outputs_close(r, g, rtol, atol) for r, g in zip(ref, got)]
        return all(ok for ok, _ in results), max((d for _, d in results), default=0.0)
    if isinstance(ref, dict) and isinstance(got, dict) and ref.keys() == got.keys():
        results = [outputs_close(ref[k], got[k], rtol, atol) for k in ref]
        return all(ok for ok, _ in results), max((d for _, d in results), default=0.0)
    return False, float("inf")


def compare_with_eager(what: str, eager: Callable[[torch.Tensor], Any], artifact: Callable[[torch.Tensor], Any],
                       example: torch.Tensor, multiple: int = 1, rtol: float = 1e-4, atol: float = 1e-5,
                       same_batch: bool = False, hint: str = "") -> None:
    """Check that ``artifact`` reproduces ``eager`` at ``example`` and at another batch and H x W.

    The second input (:func:`other_input`) keeps H, W multiples of ``multiple``; ``same_batch``
    keeps the batch size (a trace in train mode fixes it). Grad mode is the caller's.

    Args:
        what: the artifact's name in the error ("traced model", ...).
        eager: the reference, (B, C, H, W) -> outputs.
        artifact: the exported callable, same signature.
        example: the export-time input (B, C, H, W).
        multiple: the model's size multiple.
        rtol: tolerance relative to the largest absolute reference value.
        atol: absolute tolerance.
        same_batch: keep the example's batch size for the second input.
        hint: appended to an error (e.g. what tracing warned about).

    Raises:
        ExportCheckError: the artifact fails at an input (a shape frozen at export time) or
            its outputs differ; one line naming the input shape and the largest difference.
    """
    for x in (example, other_input(example, multiple, same_batch)):
        try:
            got = artifact(x)
        except Exception as exc:  # anything the exported artifact raises means it is unusable at this size
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ExportCheckError(f"{what} does not match the eager model: it fails at input {tuple(x.shape)} "
                                   f"({first[:200]}){hint}") from exc
        ok, worst = outputs_close(eager(x), got, rtol, atol)
        if not ok:
            raise ExportCheckError(f"{what} does not match the eager model at input {tuple(x.shape)} "
                                   f"(max abs difference {worst:.3g}){hint}")
