"""InferCallback: collect every model output of a loader as numpy (Catalyst 19.x's InferCallback)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from segzoo.errors import short_repr
from segzoo.fileio import atomic_write
from segzoo.training.callback import Callback, CallbackOrder, register_callback
from segzoo.training.state import RunnerState


@register_callback("InferCallback")
class InferCallback(Callback):
    """Keep the outputs of every batch, concatenated in loader order, as numpy arrays.

    After a loader, ``predictions`` maps each output key to one array over the loader's
    samples, e.g. ``predictions["logits"]`` of shape (N, K, H, W) (CPU copies; bfloat16 becomes
    float32). It is reset at each loader start, so after :meth:`~segzoo.training.Runner.infer`
    with several loaders it holds the last one's. As in Catalyst 19.x it runs first
    (``CallbackOrder.Internal``), so in ``runner.infer(callbacks=[CheckpointCallback(resume=...),
    InferCallback()])`` it is ``runner.callbacks[0]``.

    Args:
        out_dir: folder for ``out_prefix`` (created when missing).
        out_prefix: when set, each loader's arrays are also saved with ``np.save`` to
            ``out_prefix.format(suffix=f"{loader}.{key}")`` (``.npy`` added when missing);
            it must contain ``{suffix}``.
        overwrite: replace existing files; without it an existing file is refused
            (FileExistsError) rather than silently replaced.

    Example:
        >>> runner.infer(model, {"infer": loader}, callbacks=[InferCallback()])
        >>> logits = runner.callbacks[0].predictions["logits"]   # (N, K, H, W) numpy
    """

    def __init__(self, out_dir: str | os.PathLike | None = None, out_prefix: str | None = None,
                 overwrite: bool = False) -> None:
        super().__init__(CallbackOrder.Internal)
        if out_dir is not None and out_prefix is None:
            raise ValueError("InferCallback(out_dir=...) also needs out_prefix, e.g. "
                             "out_prefix='predictions.{suffix}' (Catalyst wrote to 'out_dir/None')")
        if out_prefix is not None and "{suffix}" not in str(out_prefix):
            raise ValueError(f"InferCallback out_prefix must contain '{{suffix}}' (replaced by 'loader.key'), "
                             f"got {short_repr(out_prefix)}")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.out_prefix = out_prefix
        self.overwrite = overwrite
        self.predictions: dict[str, np.ndarray] = {}
        self._parts: dict[str, list[np.ndarray]] = {}

    def on_loader_start(self, state: RunnerState) -> None:
        self.predictions, self._parts = {}, {}

    def on_batch_end(self, state: RunnerState) -> None:
        for key, value in state.output.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"InferCallback: model output {key!r} is a {type(value).__name__}, not a tensor")
            value = value.detach()
            if value.dtype == torch.bfloat16:
                value = value.float()
            self._parts.setdefault(key, []).append(np.atleast_1d(value.cpu().numpy()))

    def on_loader_end(self, state: RunnerState) -> None:
        self.predictions = {key: np.concatenate(parts, axis=0) for key, parts in self._parts.items()}
        self._parts = {}
        if self.out_prefix is None or not state.is_main_process:
            return
        for key, value in self.predictions.items():
            path = Path(self.out_prefix.format(suffix=f"{state.loader_name}.{key}"))
            if self.out_dir is not None:
                path = self.out_dir / path
            if path.suffix != ".npy":
                path = path.with_name(path.name + ".npy")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f, v=value: np.save(f, v), overwrite=self.overwrite)
