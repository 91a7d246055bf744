"""Calibration of the layout choice: both layouts timed on a model here, the faster ones cached.

The policy the models read (:func:`segzoo.hardware.preferred_layout`, the cache, the rules) sits
below the models; measuring builds a model, so it lives here, above them (issue 20). Run it with
``segzoo hardware --calibrate`` (:mod:`segzoo.cli.hardware`), on an idle machine.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo import hardware
from segzoo.errors import SegzooError
from segzoo.hardware.cache import read_cache
from segzoo.hardware.load import LoadProbe, busy_threshold

__all__ = ["LOAD_SAMPLE_SECONDS", "MachineBusyError", "calibrate"]

#: Seconds the load of other processes is sampled before a calibration that is to be cached.
LOAD_SAMPLE_SECONDS = 1.0


def _ms(fn: Callable[[bool], Any], arg: bool) -> float:
    start = time.perf_counter()
    fn(arg)
    return 1000 * (time.perf_counter() - start)


class MachineBusyError(SegzooError, RuntimeError):
    """Other processes took CPU time before a calibration that was to be cached: it was not run."""


def _busy_before(seconds: float) -> str | None:
    """Why the machine is too busy to calibrate (other processes' CPU use over ``seconds``), or ``None``."""
    probe = LoadProbe().start()
    time.sleep(seconds)
    cpus = probe.other_cpus()
    if cpus is not None:
        return f"other processes used {cpus:.2f} of {os.cpu_count() or 1} CPUs" if cpus > busy_threshold() else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0  # no /proc/stat: the load average
    return f"load average {load:.2f} on {os.cpu_count() or 1} CPUs" if load > 0.5 * (os.cpu_count() or 1) else None


def calibrate(build: Callable[[bool], nn.Module] | None = None, batch_size: int = 4, size: int = 128,
              repeats: int = 7, margin: float = 0.03, save: bool = True,
              path: Path | None = None, max_seconds: float = 60.0) -> dict[str, Any]:
    """Time a model's forward and train step in both layouts here and cache the faster ones.

    Runs both layouts interleaved (``repeats`` times each after two warm-ups) and picks NCHW for a pass
    only when its fastest call beats channels_last's by more than ``margin`` (the noise of a shared
    machine should not flip the default). A few seconds with the defaults (a resnet18 Unet,
    4 x 3 x 128 x 128) on an idle machine; the timed repeats stop once ``max_seconds`` have passed.

    With ``save``, the choice is cached only if it was measured on an idle machine: the CPU time
    other processes take is measured for :data:`LOAD_SAMPLE_SECONDS` before (a busy machine raises
    :class:`MachineBusyError` without measuring) and during the measurement (then the result is
    returned with ``cached=False`` and ``not_cached`` saying why); see :mod:`segzoo.hardware.load`.

    Args:
        build: ``build(channels_last) -> model`` (default: ``resnet18_unet`` with random weights).
        batch_size: B of the input (B, 3, size, size).
        size: H = W of the input.
        repeats: timed calls per layout and pass (at most; the fastest is used).
        margin: relative advantage NCHW needs to be chosen.
        save: write the result to the cache under :func:`segzoo.hardware.machine_key` (if the machine was idle).
        path: the cache file (default :func:`segzoo.hardware.cache_path`).
        max_seconds: time after which no further repeat starts (at least one always runs).

    Returns:
        ``{"key", "forward", "train", "times_ms": {...}, "cached", ...}``: ``forward`` / ``train`` are
        the chosen channels_last flags, ``times_ms`` the fastest call per pass and layout,
        ``repeats`` how many ran, ``other_cpus`` what other processes used meanwhile (``None``: unknown).

    Raises:
        MachineBusyError: ``save`` and other processes were busy before the measurement.
        WriteError: the cache cannot be written, or the file there is not a cache segzoo can read
            (it is left alone).
    """
    import torch.nn.functional as F

    target = Path(path or hardware.cache_path())
    if save:
        entries, unusable = read_cache(target)
        if unusable is not None:
            from segzoo.errors import WriteError

            raise WriteError(f"cannot write the layout cache {target}: the file there is not one segzoo can "
                             f"read ({unusable}); it was left as it is: remove it and calibrate again")
        busy = _busy_before(LOAD_SAMPLE_SECONDS)
        if busy:
            raise MachineBusyError(f"not calibrated: {busy} just before; timings would be skewed, so "
                                   f"nothing was measured or cached (run it on an idle machine)")
    if build is None:
        from segzoo.models import create_model

        def build(cl: bool) -> nn.Module:
            return create_model("resnet18_unet", pretrained=False, channels_last=cl)

    probe = LoadProbe().start()
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, size, size)
    models = {cl: build(cl) for cl in (True, False)}
    y = None
    opts = {cl: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for cl, m in models.items()}

    def forward(cl: bool) -> None:
        models[cl].eval()
        with torch.no_grad():
            models[cl](x)

    def train(cl: bool) -> None:
        nonlocal y
        m = models[cl]
        m.train()
        opts[cl].zero_grad(set_to_none=True)
        out = m(x)
        y = (torch.rand_like(out) > 0.5).float() if y is None else y
        F.binary_cross_entropy_with_logits(out, y).backward()
        opts[cl].step()

    times: dict[str, list[float]] = {f"{p} {'cl' if cl else 'nchw'}": [] for p in ("forward", "train")
                                     for cl in (True, False)}
    for _ in range(2):
        for cl in (True, False):
            forward(cl)
            train(cl)
    done = 0
    while done < repeats and (done == 0 or time.perf_counter() - probe.wall < max_seconds):
        for cl in (True, False):
            tag = "cl" if cl else "nchw"
            times[f"forward {tag}"].append(_ms(forward, cl))
            times[f"train {tag}"].append(_ms(train, cl))
        done += 1
    others = probe.other_cpus()
    # the fastest call of each: other processes on a shared machine only ever add time
    best = {k: min(v) for k, v in times.items()}
    result = {"key": hardware.machine_key(), "forward": not best["forward nchw"] < best["forward cl"] * (1 - margin),
              "train": not best["train nchw"] < best["train cl"] * (1 - margin),
              "times_ms": best, "median_ms": {k: statistics.median(v) for k, v in times.items()},
              "repeats": done, "seconds": round(time.perf_counter() - probe.wall, 2),
              "other_cpus": None if others is None else round(others, 3),
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
              "batch_size": batch_size, "size": size, "date": time.strftime("%Y-%m-%d"), "cached": False}
    if save and others is not None and others > busy_threshold():
        result["not_cached"] = (f"other processes used {others:.2f} of {os.cpu_count() or 1} CPUs during the "
                                f"measurement, which skews its timings")
    elif save:
        from segzoo.fileio import write_json_atomic

        entries[result["key"]] = {k: v for k, v in result.items() if k not in ("key", "cached")}
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(entries, target, overwrite=True)
        hardware._cpu_choice.cache_clear()  # preferred_layout reads it again
        result["cached"] = True
    return result
