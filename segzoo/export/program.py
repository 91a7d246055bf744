"""``torch.export`` programs (``.pt2``) with dynamic batch, height and width."""

from __future__ import annotations

import inspect
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.export.common import DEPRECATED, compare_with_eager, size_multiple, write_artifact
from segzoo.inference.metadata import EXTRA_FILE


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
    multiple = size_multiple(model)
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
        warnings.filterwarnings("ignore", message=DEPRECATED)
        program = torch.export.export(model, (example,), dynamic_shapes={arg: dims})
    if verify:
        with torch.no_grad():
            compare_with_eager("exported program", model, program.module(), example, multiple, 1e-4, 1e-5)
    extra = {EXTRA_FILE: json.dumps({"size_multiple": multiple, **(metadata or {})})}
    buf = io.BytesIO()  # in memory: on a full disk torch's writer would abort the process
    with warnings.catch_warnings():  # torch 2.14 warns about CPU weights it then saves correctly
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(program, buf, extra_files=extra)
    return write_artifact(path, buf.getvalue(), force)
