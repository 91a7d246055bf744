"""The training data path: how long training steps wait for their batches, and uint8 batches normalized on the device.

:func:`record_data_wait` turns what :class:`~segzoo.training.loop.TrainingLoop` measured (``perf_counter``
only) into the ``data_wait`` / ``data_wait_share`` metrics of a training loader and one line when the
share is high. :func:`batch_normalizer` is the float conversion and normalization of a loader whose
dataset gives uint8 features (segzoo's datasets with ``normalize="batch"``), done once per batch on
the device instead of per image in the DataLoader workers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from segzoo.training.state import RunnerState

#: share of a training loader's pass spent waiting for batches above which the run says so, once per epoch
DATA_WAIT_WARN = 0.2


def record_data_wait(state: RunnerState, waited: float, elapsed: float, steps: int, first: float = 0.0,
                     workers: int | None = None) -> None:
    """Add a training loader's data wait to its metrics and say so when it is a large share of the pass.

    ``data_wait`` is the seconds the pass's steps waited for their batch (from the end of one step, or
    the pass's start, to the next batch being yielded: worker start-up included) and
    ``data_wait_share`` that time over the pass's wall time. They are added after ``on_loader_end``,
    so they reach the epoch's metrics (``_metrics.json``, ``metrics.csv``, the console line) but not
    the loader-end callbacks. Above :data:`DATA_WAIT_WARN` the main process prints one line (also to
    ``logdir/log.txt``) saying what to do: more workers while they are fewer than the usable CPUs.

    Args:
        state: the run's state (``loader_metrics`` of the pass that ended).
        waited: seconds the steps waited.
        elapsed: seconds of the whole pass.
        steps: batches of the pass.
        first: of ``waited``, the seconds before the first batch.
        workers: the loader's ``num_workers`` (``None``: not a DataLoader).
    """
    share = waited / elapsed if elapsed > 0 else 0.0
    state.loader_metrics["data_wait"] = waited
    state.loader_metrics["data_wait_share"] = share
    if share < DATA_WAIT_WARN or not state.is_main_process:
        return
    from segzoo.hardware.threads import available_cpus

    cpus = available_cpus()[0]
    if first > waited / 2 and steps > 1:
        advice = (f"{1000 * first:.0f} ms of it before the first batch (worker start-up, a short epoch): "
                  f"persistent workers pay it once")
    elif workers is not None and workers >= cpus:
        advice = (f"{workers} workers already use the {cpus} usable CPUs: make the items cheaper (smaller "
                  f"images, lighter transforms) or faster to read")
    else:
        advice = "raise data.num_workers (the DataLoader's num_workers)"
    text = (f"data loading took {share:.0%} of epoch {state.epoch} ({state.loader_name}: {1000 * waited / steps:.1f} "
            f"of {1000 * elapsed / steps:.1f} ms per step waiting for the next batch): {advice}")
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
    return None if spec is None else _normalizer(spec, device)


def _normalizer(spec: tuple[tuple[float, ...], tuple[float, ...]],
                device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.tensor(spec[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    return normalize



def float_item(dataset: Any, index: int = 0) -> Any:
    """``dataset[index]`` with its uint8 ``features`` (3, H, W) normalized as a batch of one would be
    (:func:`batch_normalizer`): float32, as the model sees them. Other items are returned as they are."""
    item = dataset[index]
    spec = _normalization_of(dataset)
    x = item.get("features") if spec is not None and isinstance(item, dict) else None
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 3:
        item = {**item, "features": _normalizer(spec, x.device)(x[None])[0]}
    return item


#: the most DataLoader workers ``num_workers="auto"`` starts
AUTO_WORKERS = 2


def auto_num_workers(cpus: int | None = None) -> int:
    """``num_workers="auto"``: ``min(AUTO_WORKERS, usable CPUs - 1)``, at least 0.

    One CPU is left to the training step itself (its intra-op threads); the data of segzoo's
    example configs takes a small fraction of a step's compute, so one or two workers hide it
    completely, and more would only take CPUs and memory from the step. ``cpus``: default
    :func:`segzoo.hardware.threads.available_cpus` (affinity mask and cgroup quota).
    """
    if cpus is None:
        from segzoo.hardware.threads import available_cpus

        cpus = available_cpus()[0]
    return max(0, min(AUTO_WORKERS, cpus - 1))


def quiet_if_parent_left(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker whose parent stopped reading (Ctrl-C, an error in the loop) ends
    without printing the ``BrokenPipeError`` traceback of multiprocessing's fd-sharing thread; other errors print."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not issubclass(kind, BrokenPipeError | ConnectionResetError | EOFError):
            previous(kind, value, tb)

    sys.excepthook = hook


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` of segzoo's loaders: :func:`quiet_if_parent_left`, and the dataset's
    albumentations pipeline (its ``transforms``, anything with ``set_random_seed``) seeded from the worker's own
    seed. Forked workers would otherwise share one copy of the pipeline's random state and draw the same
    augmentations; the worker's seed comes from the loader's generator, so a seeded run draws the same ones again."""
    quiet_if_parent_left(worker_id)
    info = torch.utils.data.get_worker_info()
    reseed = getattr(getattr(info.dataset, "transforms", None), "set_random_seed", None) if info is not None else None
    if callable(reseed):
        reseed(info.seed % 2**32)


def loader_options(num_workers: int | str = 0, prefetch_factor: int | None = None) -> dict[str, Any]:
    """DataLoader keywords for ``num_workers`` (an int >= 0 or ``"auto"``, :func:`auto_num_workers`):
    ``pin_memory`` when CUDA is available, and with workers ``persistent_workers=True`` (no process
    start-up each epoch) and ``prefetch_factor`` (default 2, torch's).

    More workers than usable CPUs is allowed (slow storage may want them) and said in one line.

    Raises:
        ValueError: ``num_workers`` is neither ``"auto"`` nor an int >= 0, or ``prefetch_factor`` < 1.
    """
    if num_workers == "auto":
        num_workers = auto_num_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be 'auto' or an int >= 0, got {num_workers!r}")
    if prefetch_factor is not None and (isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int)
                                        or prefetch_factor < 1):
        raise ValueError(f"prefetch_factor must be an int >= 1, got {prefetch_factor!r}")
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        from segzoo.hardware.threads import available_cpus

        cpus, how = available_cpus()
        if num_workers > cpus:
            print(f"segzoo: {num_workers} data loading workers on {cpus} usable CPUs ({how}): they compete with "
                  f"the training step; more workers than CPUs only help slow storage (num_workers auto: "
                  f"{auto_num_workers(cpus)})", flush=True)
        options.update(persistent_workers=True, prefetch_factor=prefetch_factor or 2,
                       worker_init_fn=init_worker)
    return options
