"""The training data path: how long training steps wait for their batches, and uint8 batches normalized on the device.

:func:`record_data_wait` turns what :class:`~segzoo.training.loop.TrainingLoop` measured (``perf_counter``
only) into the ``data_wait`` / ``data_wait_share`` metrics of a training loader and one line when the
share is high. :func:`batch_normalizer` is the float conversion and normalization of a loader whose
dataset gives uint8 features (segzoo's datasets with ``normalize="batch"``), done once per batch on
the device instead of per image in the DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from segzoo.training.state import RunnerState

#: share of a training loader's pass spent waiting for batches above which the run says so, once per epoch
DATA_WAIT_WARN = 0.2


def record_data_wait(state: RunnerState, waited: float, elapsed: float, steps: int) -> None:
    """Add a training loader's data wait to its metrics and say so when it is a large share of the pass.

    ``data_wait`` is the seconds the pass's steps waited for their batch (from the end of one step, or
    the pass's start, to the next batch being yielded: worker start-up included) and
    ``data_wait_share`` that time over the pass's wall time. They are added after ``on_loader_end``,
    so they reach the epoch's metrics (``_metrics.json``, ``metrics.csv``, the console line) but not
    the loader-end callbacks. Above :data:`DATA_WAIT_WARN` the main process prints one line (also to
    ``logdir/log.txt``).
    """
    share = waited / elapsed if elapsed > 0 else 0.0
    state.loader_metrics["data_wait"] = waited
    state.loader_metrics["data_wait_share"] = share
    if share < DATA_WAIT_WARN or not state.is_main_process:
        return
    text = (f"data loading took {share:.0%} of epoch {state.epoch} ({state.loader_name}: {1000 * waited / steps:.1f} "
            f"of {1000 * elapsed / steps:.1f} ms per step waiting for the next batch): raise data.num_workers "
            f"(the DataLoader's num_workers)")
    print(text, flush=True)
    if state.logdir is not None:
        from pathlib import Path

        from segzoo.fileio import write_error

        path = Path(state.logdir) / "log.txt"
        if path.parent.is_dir():
            try:
                with open(path, "a") as f:
                    f.write(text + "\n")
            except OSError as exc:
                raise write_error(path, exc) from None


def _normalization_of(dataset: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` when ``dataset`` (through Subset / ConcatDataset) leaves normalization to the batch.

    Raises:
        ValueError: a ConcatDataset mixing datasets that normalize their items and ones that do not.
    """
    parts = getattr(dataset, "datasets", None)
    if isinstance(parts, list | tuple) and parts:
        found = {_normalization_of(d) for d in parts}
        if len(found) > 1:
            raise ValueError(f"a ConcatDataset mixes datasets whose features are normalized differently on the "
                             f"batch ({sorted(map(str, found))}); give them the same normalize= and mean/std")
        return found.pop()
    inner = getattr(dataset, "dataset", None)
    if inner is not None and getattr(dataset, "indices", None) is not None:  # a Subset
        return _normalization_of(inner)
    spec = getattr(dataset, "batch_normalization", None)
    return tuple(spec) if spec else None


def batch_normalizer(loader: Any, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The on-device normalization of a loader whose dataset gives uint8 ``features`` (``normalize="batch"``).

    Returns ``None`` for any other loader (its batches are used as they come). The function takes a
    uint8 batch (B, 3, H, W) on ``device`` and returns float32 ``(x / 255 - mean) / std``: the same
    operations, in the same order, as the dataset's per-item normalization, so the values are equal.
    """
    spec = _normalization_of(getattr(loader, "dataset", None))
    if spec is None:
        return None
    mean = torch.tensor(spec[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    return normalize

