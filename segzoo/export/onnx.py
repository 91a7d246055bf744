"""ONNX export of a model, with dynamic batch, height and width, checked in onnxruntime."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.export.common import (
    DEPRECATED,
    check_opset,
    compare_with_eager,
    require,
    size_multiple,
    write_artifact,
)
from segzoo.inference.metadata import add_onnx_metadata


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, opset: int = 17,
                verify: bool = True, force: bool = False, metadata: dict[str, Any] | None = None) -> Path:
    """Export ``model`` to ONNX with dynamic batch, height and width.

    The graph input is ``input`` (B, C, H, W) float32, the output ``logits`` (B, K, H, W); a model
    built with ``aux_params`` has two outputs, ``mask`` (B, K, H, W) and ``label`` (B, K').
    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no extra
    package beyond ``onnx``; checked in onnxruntime (if installed) against eager at the
    export size and at another batch and H x W (tolerance 1e-3). ``metadata`` (see
    :mod:`segzoo.inference.metadata`) goes into the file's ``metadata_props`` (key ``segzoo``).

    Raises:
        ValueError: ``opset`` outside the supported range.
        MissingDependencyError: ``onnx`` is not installed.
        ExportCheckError: onnxruntime outputs differ from eager.
    """
    check_opset(opset)
    require("onnx", "ONNX export")
    ort = require("onnxruntime", "checking the ONNX file") if verify else None
    model = model.eval().cpu()
    example = example.cpu()
    axes = {0: "batch", 2: "height", 3: "width"}
    aux = getattr(model, "aux_classes", None) is not None
    names = ["mask", "label"] if aux else ["logits"]
    dynamic = {"input": axes, names[0]: axes, **({"label": {0: "batch"}} if aux else {})}
    buf = io.BytesIO()  # in memory: on a full disk torch's writer would abort the process
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=DEPRECATED)
        with torch.no_grad():
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"],
                              output_names=names, dynamic_axes=dynamic, opset_version=opset)
    data = add_onnx_metadata(buf.getvalue(), metadata)
    if ort is not None:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

        def run_session(x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
            outs = [torch.from_numpy(o) for o in session.run(None, {"input": x.numpy()})]
            return tuple(outs) if aux else outs[0]

        with torch.no_grad():
            compare_with_eager("ONNX model (onnxruntime)", model, run_session, example, size_multiple(model),
                               1e-3, 1e-3)
    return write_artifact(path, data, force)
