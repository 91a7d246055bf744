"""From checkpoint to deployable file: TorchScript trace, ONNX and ``torch.export`` programs.

Python API: :func:`trace_model`, :func:`export_onnx`, :func:`export_program` work on a
model; :func:`trace_checkpoint` and :func:`export_checkpoint` on a checkpoint or log
directory (the model is rebuilt with :func:`segzoo.loading.load_model_info`).
Command line: ``segzoo trace LOGDIR`` and ``segzoo export LOGDIR --format ... --out PATH``.

Every artifact is checked against the eager model before it is written, at the export
size and at a second, different batch and H x W (shapes frozen by tracing are caught
here), and written atomically. An existing output file is refused unless ``force=True``.

TorchScript (``torch.jit``) is deprecated upstream since torch 2.x; it is kept for C++
(``torch::jit::load``) users and its deprecation warning is silenced here. The forward
path is ``torch.export`` (``--format export``, a ``.pt2`` file).
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.checkpoint import resolve_checkpoint
from segzoo.errors import SegzooError, check_file_name
from segzoo.fileio import atomic_path, check_not_input, write_bytes_atomic, write_error
from segzoo.inference.metadata import add_onnx_metadata, model_metadata, torchscript_extra_files
from segzoo.loading import LoadedModel, ModelFactory, load_model_info

DEFAULT_INPUT_SIZE = (256, 256)
TRACE_MODES = ("eval", "train")
FORMATS = ("onnx", "torchscript", "export")
# the TorchScript-based ONNX exporter of torch 2.14 goes down to opset 9, but segzoo models pad their
# input by amounts computed from its runtime size, and ONNX Pad takes non-constant pads only from opset 11
ONNX_OPSETS = (11, 20)
_DEPRECATED = r".*(deprecated|Deprecat).*"


class ExportCheckError(SegzooError, RuntimeError):
    """An exported or traced model does not reproduce the eager model's outputs."""


class MissingDependencyError(SegzooError, RuntimeError):
    """An optional package needed for an export format is not installed."""


# ---- helpers ------------------------------------------------------------------------

def traced_filename(checkpoint: str, method: str = "forward", mode: str = "eval",
                    requires_grad: bool = False) -> str:
    """Catalyst's name: ``traced-{checkpoint}-{method}[-in_train][-with_grad].pth``."""
    name = f"traced-{checkpoint}-{method}"
    if mode == "train":
        name += "-in_train"
    if requires_grad:
        name += "-with_grad"
    return name + ".pth"


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


def check_sizes(input_size: Sequence[int], batch_size: int) -> None:
    """Raise ValueError unless ``input_size`` is (H, W) of positive ints and ``batch_size`` >= 1."""
    if len(input_size) != 2 or not all(isinstance(s, int) and s > 0 for s in input_size):
        raise ValueError(f"input size must be two positive integers H W, got {tuple(input_size)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")


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


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with a clear error for bad names or a missing GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


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
    even with ``force``); a ``.pth`` file in the ``checkpoints/`` folder of an input checkpoint
    (it would be listed, and tried, as a checkpoint); a parent that is a file; a file name longer
    than the file system allows.

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
        if out.suffix == ".pth" and folder.name == "checkpoints" and folder.is_dir() \
                and out.parent.is_dir() and os.path.samefile(out.parent, folder):
            raise ValueError(f"output {out} is in the checkpoints folder {folder}, where it would be taken for "
                             f"a checkpoint; choose another folder (default: the log directory's trace/)")
    return out


def _outputs_close(ref: Any, got: Any, rtol: float, atol: float) -> tuple[bool, float]:
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
        results = [_outputs_close(r, g, rtol, atol) for r, g in zip(ref, got)]
        return all(ok for ok, _ in results), max((d for _, d in results), default=0.0)
    if isinstance(ref, dict) and isinstance(got, dict) and ref.keys() == got.keys():
        results = [_outputs_close(ref[k], got[k], rtol, atol) for k in ref]
        return all(ok for ok, _ in results), max((d for _, d in results), default=0.0)
    return False, float("inf")


def _run(what: str, fn: Any, x: Any, shape: Sequence[int], hint: str = "") -> Any:
    """Call ``fn(x)``; an exception (e.g. a shape frozen at export time) becomes an ExportCheckError."""
    try:
        return fn(x)
    except Exception as exc:  # anything the exported artifact raises means it is unusable at this size
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ExportCheckError(f"{what} does not match the eager model: it fails at input {tuple(shape)} "
                               f"({first[:200]}){hint}") from exc


def _check(what: str, ref: Any, got: Any, x: torch.Tensor, rtol: float, atol: float, hint: str = "") -> None:
    ok, worst = _outputs_close(ref, got, rtol, atol)
    if not ok:
        raise ExportCheckError(f"{what} does not match the eager model at input {tuple(x.shape)} "
                               f"(max abs difference {worst:.3g}){hint}")


# ---- TorchScript ----------------------------------------------------------------------

def trace_model(model: nn.Module, example: torch.Tensor, method: str = "forward", mode: str = "eval",
                requires_grad: bool = False, verify: bool = True) -> torch.jit.ScriptModule:
    """Trace ``model.<method>`` with ``torch.jit`` and check it against eager execution.

    Args:
        model: the model (its parameters' ``requires_grad`` is set to ``requires_grad``).
        example: input (B, C, H, W) used for tracing.
        method: the method to trace (default ``forward``).
        mode: ``"eval"`` or ``"train"`` (BatchNorm with batch statistics, dropout on).
        requires_grad: trace with autograd on, keeping parameters trainable.
        verify: compare with eager at ``example`` and at another batch and H x W
            (rtol 1e-4, atol 1e-5); BatchNorm running statistics are restored afterwards.

    Returns:
        The traced module; ``torch.jit.save`` it, load it with ``torch.jit.load`` or
        ``torch::jit::load`` in C++.

    Raises:
        ValueError: unknown ``mode``; ``method`` is not a method of the model.
        ExportCheckError: the trace does not reproduce eager outputs (e.g. a frozen size).
    """
    if mode not in TRACE_MODES:
        raise ValueError(f"mode must be one of {TRACE_MODES}, got {mode!r}")
    if not callable(getattr(model, method, None)):
        own = sorted({n for cls in type(model).__mro__ if cls not in (nn.Module, object)
                      for n, v in vars(cls).items() if callable(v) and not n.startswith("_")})
        raise ValueError(f"{type(model).__name__} has no method {method!r} to trace; "
                         f"its methods: {', '.join(own)}")
    model.train(mode == "train")
    for p in model.parameters():
        p.requires_grad_(requires_grad)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=_DEPRECATED, category=FutureWarning)
        with torch.set_grad_enabled(requires_grad):
            if method == "forward":
                traced = torch.jit.trace(model, example)
            else:
                traced = torch.jit.trace_module(model, {method: example})
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if verify:
        hint = ""
        if tracer:
            first = tracer[0]
            hint = f"; tracing warned at {Path(first.filename).name}:{first.lineno}: {str(first.message)[:120]}"
        multiple = int(getattr(model, "size_multiple", 1) or 1)
        with torch.set_grad_enabled(requires_grad):
            for x in (example, other_input(example, multiple, same_batch=mode == "train")):
                got = _run("traced model", getattr(traced, method), x, x.shape, hint)
                _check("traced model", getattr(model, method)(x), got, x, 1e-4, 1e-5, hint)
        model.load_state_dict(saved)
        traced.load_state_dict(saved)
    else:
        for w in tracer:  # unchecked: let the caller see what tracing froze
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return traced


def save_traced(traced: torch.jit.ScriptModule, path: str | os.PathLike, force: bool = False,
                metadata: dict[str, Any] | None = None) -> Path:
    """``torch.jit.save`` atomically, without the upstream deprecation warning.

    ``metadata`` (see :mod:`segzoo.inference.metadata`) is stored as the extra file ``segzoo.json``.
    The module is serialized in memory and the bytes written through :mod:`segzoo.fileio`: a full
    disk is one WriteError line (torch's own file writer aborts the process on it).
    """
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED, category=FutureWarning)
        torch.jit.save(traced, buf, _extra_files=torchscript_extra_files(metadata))
    return write_bytes_atomic(path, buf.getvalue(), overwrite=force)


def _default_trace_dir(source: Path) -> Path:
    if source.is_file():
        return source.parent.parent / "trace" if source.parent.name == "checkpoints" else source.parent / "trace"
    return source / "trace"


def trace_checkpoint(logdir: str | os.PathLike, checkpoint: str = "best", method: str = "forward",
                     mode: str = "eval", requires_grad: bool = False, out_dir: str | os.PathLike | None = None,
                     out_model: str | os.PathLike | None = None, device: str = "cpu",
                     input_size: Sequence[int] = DEFAULT_INPUT_SIZE, batch_size: int = 1,
                     model_factory: ModelFactory | None = None, force: bool = False) -> Path:
    """Rebuild a checkpoint's model, trace it and save ``traced-{checkpoint}-{method}[...].pth``.

    Args:
        logdir: trainer log directory (or a checkpoint file).
        checkpoint: ``best`` | ``last`` | ``{stage}.{epoch}`` | a path.
        method: model method to trace (default ``forward``).
        mode: ``"eval"`` or ``"train"``; adds ``-in_train`` to the name.
        requires_grad: trace with gradients; adds ``-with_grad`` to the name.
        out_dir: folder of the output (default ``LOGDIR/trace``).
        out_model: output file: a path, or with ``out_dir`` a plain file name in that folder.
        device: where to trace (``cpu``, ``cuda``, ``cuda:1``...).
        input_size: (H, W) of the tracing input; the result works at other sizes too.
        batch_size: batch of the tracing input.
        model_factory: ``"package.module:factory"`` for models outside the registry.
        force: overwrite an existing output file.

    Returns:
        The path written.
    """
    if mode not in TRACE_MODES:
        raise ValueError(f"mode must be one of {TRACE_MODES}, got {mode!r}")
    check_sizes(input_size, batch_size)
    dev = resolve_device(device)
    source = Path(logdir)
    if out_model is not None and out_dir is not None:
        out = Path(out_dir) / check_file_name(str(out_model), "--out-model (a file name in --out-dir)")
    elif out_model is not None:
        out = Path(out_model)
    else:
        tag = source.stem if source.is_file() else (Path(checkpoint).stem if checkpoint.endswith(".pth")
                                                    else checkpoint)
        out = Path(out_dir) if out_dir is not None else _default_trace_dir(source)
        out = out / traced_filename(tag, method, mode, requires_grad)
    path = resolve_checkpoint(logdir, checkpoint)
    check_output(out, force, inputs=[path])
    loaded = load_model_info(path, checkpoint, model_factory, map_location=dev)
    example = example_input(loaded.model, input_size, batch_size, dev)
    traced = trace_model(loaded.model, example, method=method, mode=mode, requires_grad=requires_grad)
    return save_traced(traced, out, force, metadata=checkpoint_metadata(loaded))


# ---- ONNX and torch.export --------------------------------------------------------------

def _require(module: str, purpose: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{purpose} needs the {module!r} package: pip install 'segzoo[export]'") from exc


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, opset: int = 17,
                verify: bool = True, force: bool = False, metadata: dict[str, Any] | None = None) -> Path:
    """Export ``model`` to ONNX with dynamic batch, height and width.

    The graph input is ``input`` (B, C, H, W) float32, the output ``logits`` (B, K, H, W).
    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no extra
    package beyond ``onnx``; checked in onnxruntime (if installed) against eager at the
    export size and at another batch and H x W (tolerance 1e-3). ``metadata`` (see
    :mod:`segzoo.inference.metadata`) goes into the file's ``metadata_props`` (key ``segzoo``).

    Raises:
        ValueError: ``opset`` outside the supported range.
        MissingDependencyError: ``onnx`` is not installed.
        ExportCheckError: onnxruntime outputs differ from eager.
    """
    if not isinstance(opset, int) or not ONNX_OPSETS[0] <= opset <= ONNX_OPSETS[1]:
        raise ValueError(f"ONNX opset must be an integer in {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]}, got {opset!r}")
    _require("onnx", "ONNX export")
    ort = _require("onnxruntime", "checking the ONNX file") if verify else None
    model = model.eval().cpu()
    example = example.cpu()
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()  # in memory: on a full disk torch's writer would abort the process
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=_DEPRECATED)
        with torch.no_grad():
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": axes, "logits": axes},
                              opset_version=opset)
    data = add_onnx_metadata(buf.getvalue(), metadata)
    if ort is not None:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        multiple = int(getattr(model, "size_multiple", 1) or 1)
        for x in (example, other_input(example, multiple)):
            with torch.no_grad():
                ref = model(x)
            got = torch.from_numpy(_run("ONNX model (onnxruntime)", lambda a: session.run(None, {"input": a})[0],
                                        x.numpy(), x.shape))
            _check("ONNX model (onnxruntime)", ref, got, x, 1e-3, 1e-3)
    return write_bytes_atomic(path, data, overwrite=force)


def export_program(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, verify: bool = True,
                   force: bool = False, metadata: dict[str, Any] | None = None) -> Path:
    """Save a ``torch.export`` program (``.pt2``) with dynamic batch, height and width.

    segzoo models pad inputs to a multiple of ``model.size_multiple`` (m) themselves; the
    symbolic shape engine cannot prove that padding right for every size, so the program
    takes H and W that are multiples of m, at least 2*m (pad other sizes before calling it).
    ``metadata`` plus ``size_multiple`` are stored as ``segzoo.json`` in the file's extra files.
    Load with ``torch.export.load(path).module()``.

    Raises:
        ValueError: the example's H, W are not multiples of m or smaller than 2*m, or its batch is 1.
        ExportCheckError: the program's outputs differ from eager (rtol 1e-4, atol 1e-5).
    """
    from torch.export import Dim

    model = model.eval()
    multiple = int(getattr(model, "size_multiple", 1) or 1)
    h, w = example.shape[-2:]
    if h % multiple or w % multiple or min(h, w) < 2 * multiple:
        raise ValueError(f"torch.export needs an example H, W that are multiples of {multiple} and at least "
                         f"{2 * multiple}, got {h}x{w}")
    if example.shape[0] < 2:
        raise ValueError("torch.export needs an example batch of at least 2 (a batch of 1 is fixed as a constant)")
    batch = Dim("batch", min=1, max=4096)
    if multiple > 1:
        dims = {0: batch, 2: Dim("h_blocks", min=2, max=65536 // multiple) * multiple,
                3: Dim("w_blocks", min=2, max=65536 // multiple) * multiple}
    else:
        dims = {0: batch, 2: Dim("height", min=2, max=65536), 3: Dim("width", min=2, max=65536)}
    arg = next(iter(inspect.signature(model.forward).parameters))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED)
        program = torch.export.export(model, (example,), dynamic_shapes={arg: dims})
    if verify:
        module = program.module()
        for x in (example, other_input(example, multiple)):
            with torch.no_grad():
                _check("exported program", model(x), _run("exported program", module, x, x.shape), x, 1e-4, 1e-5)
    extra = {"segzoo.json": json.dumps({"size_multiple": multiple, **(metadata or {})})}
    buf = io.BytesIO()  # in memory: on a full disk torch's writer would abort the process
    with warnings.catch_warnings():  # torch 2.14 warns about CPU weights it then saves correctly
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(program, buf, extra_files=extra)
    return write_bytes_atomic(path, buf.getvalue(), overwrite=force)


def export_checkpoint(logdir: str | os.PathLike, fmt: str, out: str | os.PathLike, checkpoint: str = "best",
                      opset: int = 17, device: str = "cpu", input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
                      batch_size: int = 1, model_factory: ModelFactory | None = None, force: bool = False) -> Path:
    """Rebuild a checkpoint's model and export it as ``onnx``, ``torchscript`` or ``export`` (.pt2).

    For ``export``, ``input_size`` is rounded up to a multiple of the model's ``size_multiple``
    and the example batch is at least 2 (torch.export fixes dimensions of size 1).

    Returns:
        The path written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_sizes(input_size, batch_size)
    if fmt == "onnx" and (not isinstance(opset, int) or not ONNX_OPSETS[0] <= opset <= ONNX_OPSETS[1]):
        raise ValueError(f"ONNX opset must be an integer in {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]}, got {opset!r}")
    path = resolve_checkpoint(logdir, checkpoint)
    out = check_output(out, force, inputs=[path])
    if fmt == "onnx":
        _require("onnx", "ONNX export")
    dev = resolve_device("cpu" if fmt == "onnx" else device)
    loaded = load_model_info(path, checkpoint, model_factory, map_location=dev)
    model = loaded.model
    if fmt == "export":
        m = int(getattr(model, "size_multiple", 1) or 1)
        input_size = tuple(max(2 * m, -(-s // m) * m) for s in input_size)
        batch_size = max(2, batch_size)  # a batch of 1 would be specialised to a constant
    example = example_input(model, input_size, batch_size, dev)
    meta = checkpoint_metadata(loaded)
    if fmt == "onnx":
        return export_onnx(model, out, example, opset=opset, force=force, metadata=meta)
    if fmt == "export":
        return export_program(model, out, example, force=force, metadata=meta)
    traced = trace_model(model, example)
    return save_traced(traced, out, force, metadata=meta)


def checkpoint_metadata(loaded: LoadedModel) -> dict[str, Any]:
    """What exported files store besides the graph (normalization, model spec, classes, channels)."""
    return model_metadata(loaded.model, loaded.normalization, loaded.info.get("model_spec"))


# ---- command line (arguments: segzoo.cli_args.add_export_arguments) ---------------------

def run(args) -> int:
    """Run ``segzoo trace`` or ``segzoo export``; prints the written path."""
    common = dict(checkpoint=args.checkpoint, device=args.device, input_size=tuple(args.input_size),
                  batch_size=args.batch_size, model_factory=args.model, force=args.force)
    if args.command == "trace":
        path = trace_checkpoint(args.logdir, method=args.method, mode=args.mode, requires_grad=args.with_grad,
                                out_dir=args.out_dir, out_model=args.out_model, **common)
    else:
        path = export_checkpoint(args.logdir, args.format, args.out, opset=args.opset, **common)
    print(path)
    return 0
