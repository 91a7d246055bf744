"""From a checkpoint or log directory to one deployable file, in any format (``segzoo export``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segzoo.checkpoint import resolve_checkpoint
from segzoo.device import resolve_device
from segzoo.export.common import (
    DEFAULT_INPUT_SIZE,
    FORMATS,
    check_opset,
    check_output,
    check_sizes,
    checkpoint_metadata,
    example_input,
    require,
    size_multiple,
)
from segzoo.export.onnx import export_onnx
from segzoo.export.program import export_program
from segzoo.export.torchscript import save_traced, trace_model
from segzoo.loading import ModelFactoryLike, load_model_info


def export_checkpoint(logdir: str | os.PathLike, fmt: str, out: str | os.PathLike, checkpoint: str = "best",
                      opset: int = 17, device: str = "cpu", input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
                      batch_size: int = 1, model_factory: ModelFactoryLike | None = None,
                      force: bool = False) -> Path:
    """Rebuild a checkpoint's model and export it as ``onnx``, ``torchscript`` or ``export`` (.pt2).

    Everything a user can get wrong (format, sizes, opset, the output path, the checkpoint) is
    refused before the model is built. For ``export``, ``input_size`` is rounded up to a multiple
    of the model's ``size_multiple`` and the example batch is at least 2 (torch.export fixes
    dimensions of size 1).

    Returns:
        The path written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_sizes(input_size, batch_size)
    if fmt == "onnx":
        check_opset(opset)
    path = resolve_checkpoint(logdir, checkpoint)
    out = check_output(out, force, inputs=[path])
    if fmt == "onnx":
        require("onnx", "ONNX export")
    dev = resolve_device("cpu" if fmt == "onnx" else device)
    loaded = load_model_info(path, checkpoint, model_factory, map_location=dev)
    model = loaded.model
    if fmt == "export":
        m = size_multiple(model)
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
