"""TorchScript: ``torch.jit`` tracing of a model or checkpoint (``segzoo trace``).

TorchScript is deprecated upstream since torch 2.x; it is kept for C++ (``torch::jit::load``)
users and its deprecation warning is silenced here. The forward path is ``torch.export``
(:mod:`segzoo.export.program`).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.checkpoint import resolve_checkpoint
from segzoo.device import resolve_device
from segzoo.errors import check_file_name
from segzoo.export.common import (
    DEFAULT_INPUT_SIZE,
    DEPRECATED,
    TRACE_MODES,
    check_output,
    check_sizes,
    checkpoint_metadata,
    compare_with_eager,
    example_input,
    size_multiple,
    write_artifact,
)
from segzoo.inference.metadata import torchscript_extra_files
from segzoo.loading import ModelFactoryLike, load_model_info


def traced_filename(checkpoint: str | None, method: str = "forward", mode: str = "eval",
                    requires_grad: bool = False) -> str:
    """Catalyst's name: ``traced-{checkpoint}-{method}[-in_train][-with_grad].pth``.

    ``checkpoint=None`` (a model traced without a checkpoint, ``SupervisedRunner.trace``) leaves
    that part out: ``traced-{method}[-in_train][-with_grad].pth``.
    """
    name = "traced-" + (f"{checkpoint}-" if checkpoint is not None else "") + method
    if mode == "train":
        name += "-in_train"
    if requires_grad:
        name += "-with_grad"
    return name + ".pth"


def _check_mode(mode: str) -> None:
    if mode not in TRACE_MODES:
        raise ValueError(f"mode must be one of {TRACE_MODES}, got {mode!r}")


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
    _check_mode(mode)
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
        warnings.filterwarnings("ignore", message=DEPRECATED, category=FutureWarning)
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
        with torch.set_grad_enabled(requires_grad):
            compare_with_eager("traced model", getattr(model, method), getattr(traced, method), example,
                               size_multiple(model), 1e-4, 1e-5, same_batch=mode == "train", hint=hint)
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
        warnings.filterwarnings("ignore", message=DEPRECATED, category=FutureWarning)
        torch.jit.save(traced, buf, _extra_files=torchscript_extra_files(metadata))
    return write_artifact(path, buf.getvalue(), force)


def _default_trace_dir(source: Path) -> Path:
    if source.is_file():
        return source.parent.parent / "trace" if source.parent.name == "checkpoints" else source.parent / "trace"
    return source / "trace"


def trace_checkpoint(logdir: str | os.PathLike, checkpoint: str = "best", method: str = "forward",
                     mode: str = "eval", requires_grad: bool = False, out_dir: str | os.PathLike | None = None,
                     out_model: str | os.PathLike | None = None, device: str = "cpu",
                     input_size: Sequence[int] = DEFAULT_INPUT_SIZE, batch_size: int = 1,
                     model_factory: ModelFactoryLike | None = None, force: bool = False) -> Path:
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
    _check_mode(mode)
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
