"""Per-machine choices: the memory layout segzoo's models run in, picked from measurements.

A convolution network on a CPU runs at different speeds in NCHW and in channels_last (NHWC),
and which one wins depends on the instruction set oneDNN can use and on the pass:

- AVX-512 (an Intel Xeon in earlier sessions, an AMD EPYC Zen 5 in this one): channels_last
  wins the forward and the train step.
- AVX2 only (a real AMD EPYC in issue 15): channels_last wins the forward (~15-20 %), but lost
  the train step by 6 %: oneDNN has no brgemm channels_last kernel for the *weight gradient* of a
  convolution on AVX2 (its ``jit:avx2`` NHWC kernel took 1.2-1.5x the blocked NCHW one for a resnet34
  Unet). On a newer core held to AVX2 the two layouts trained at the same speed: the rule follows
  the real AVX2 machine, and :func:`calibrate` settles it per machine.

``channels_last="auto"`` (the models' default) therefore asks :func:`preferred_layout`, which
answers, in this order:

1. a calibration cached for this machine (:func:`calibrate`, run only when asked: it is never
   run implicitly), keyed by CPU model, ISA, torch version and thread count;
2. :data:`RULES`, keyed by ``torch.backends.cpu.get_cpu_capability()`` (``"AVX512"``, ``"AVX2"``...);
3. for ISAs nobody measured, channels_last in both passes (what segzoo did before this choice existed).

CUDA devices get channels_last in both passes (tensor cores want NHWC).

The calibration cache is ``$SEGZOO_CACHE_DIR/layout.json``, else ``$XDG_CACHE_HOME/segzoo/layout.json``,
else ``~/.cache/segzoo/layout.json``. Create it with ``python -m segzoo.hardware --calibrate``, on an
idle machine: a calibration during which other processes took CPU time is not cached. A cache
file that cannot be used (not a regular file, too large, too deeply nested, not a cache) is
ignored with one warning line naming it (:mod:`segzoo.hardware.cache`), never waited for.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.errors import SegzooError
from segzoo.hardware.cache import read_cache
from segzoo.hardware.load import LoadProbe, busy_threshold

__all__ = ["LayoutChoice", "RULES", "cpu_capability", "cpu_model", "machine_key", "cache_path", "cached_layout",
           "preferred_layout", "resolve_layout", "calibrate", "MachineBusyError"]

CACHE_FILE = "layout.json"
#: Seconds the load of other processes is sampled before a calibration that is to be cached.
LOAD_SAMPLE_SECONDS = 1.0


@dataclass(frozen=True)
class LayoutChoice:
    """Whether to run channels_last in the forward pass (eval) and in the train step.

    ``source`` says where the choice came from (``"rule AVX2"``, ``"calibration"``, ``"argument"``...).
    """

    forward: bool
    train: bool
    source: str = ""

    def for_mode(self, training: bool) -> bool:
        """The layout for a module in training (``True``) or eval mode."""
        return self.train if training else self.forward


# Measured: see BENCHMARKS.md ("Layout per machine"). Keys are torch.backends.cpu.get_cpu_capability().
RULES: dict[str, LayoutChoice] = {
    "AVX512": LayoutChoice(forward=True, train=True, source="rule AVX512"),
    "AVX2": LayoutChoice(forward=True, train=False, source="rule AVX2"),
}
UNMEASURED = LayoutChoice(forward=True, train=True, source="unmeasured ISA: channels_last")
CUDA = LayoutChoice(forward=True, train=True, source="rule cuda")


def cpu_capability() -> str:
    """The ISA torch's CPU kernels use here (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ``"SVE256"``...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model name")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key() -> str:
    """Cache key of a calibration: CPU model, ISA, torch version and intra-op threads."""
    return f"{cpu_model()} | {cpu_capability()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cache_path() -> Path:
    """Where calibrations are cached (a user cache folder, never inside the package)."""
    if os.environ.get("SEGZOO_CACHE_DIR"):
        return Path(os.environ["SEGZOO_CACHE_DIR"]) / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "segzoo" / CACHE_FILE


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; a file that is there but unusable is ignored with one warning line naming it."""
    entries, reason = read_cache(path)
    if reason is not None:
        print(f"segzoo: warning: ignoring the layout cache {path}: {reason}; the built-in rules apply "
              f"(remove it; python -m segzoo.hardware --calibrate makes a new one)", file=sys.stderr)
    return entries


def cached_layout(key: str | None = None, path: Path | None = None) -> LayoutChoice | None:
    """The calibrated choice cached for ``key`` (default: this machine), or ``None``."""
    entry = _read_cache(path or cache_path()).get(key or machine_key())
    if not isinstance(entry, dict) or not isinstance(entry.get("forward"), bool) \
            or not isinstance(entry.get("train"), bool):
        return None
    return LayoutChoice(entry["forward"], entry["train"], "calibration")


@functools.lru_cache(maxsize=8)
def _cpu_choice(key: str, path: str) -> LayoutChoice:
    cached = cached_layout(key, Path(path))
    if cached is not None:
        return cached
    return RULES.get(cpu_capability(), UNMEASURED)


def preferred_layout(device: str | torch.device = "cpu") -> LayoutChoice:
    """The layout choice for ``device`` (see the module docstring for the order of sources).

    The cache is read once per machine key and process (:func:`calibrate` refreshes it).
    """
    if torch.device(device).type == "cuda":
        return CUDA
    return _cpu_choice(machine_key(), str(cache_path()))


def resolve_layout(channels_last: bool | str, device: str | torch.device = "cpu") -> LayoutChoice:
    """``True`` / ``False`` (both passes, as given) or ``"auto"`` (:func:`preferred_layout`).

    Raises:
        ValueError: any other value.
    """
    if channels_last == "auto":
        return preferred_layout(device)
    if isinstance(channels_last, bool):
        return LayoutChoice(channels_last, channels_last, "argument")
    from segzoo.errors import short_repr

    raise ValueError(f"channels_last must be True, False or 'auto', got {short_repr(channels_last)}")


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
        save: write the result to the cache under :func:`machine_key` (if the machine was idle).
        path: the cache file (default :func:`cache_path`).
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

    target = Path(path or cache_path())
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
    result = {"key": machine_key(), "forward": not best["forward nchw"] < best["forward cl"] * (1 - margin),
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
        _cpu_choice.cache_clear()
        result["cached"] = True
    return result


def main(argv: list[str] | None = None) -> int:
    """python -m segzoo.hardware [--calibrate]: show (or measure and cache) this machine's layout choice."""
    parser = argparse.ArgumentParser(prog="python -m segzoo.hardware", description=main.__doc__)
    parser.add_argument("--calibrate", action="store_true",
                        help="measure both layouts here and cache the choice (only if no other process is busy)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="no further timed repeat starts after this many seconds (default 60)")
    args = parser.parse_args(argv)
    print(f"machine: {machine_key()}")
    code = 0
    if args.calibrate:
        if args.size < 32 or args.repeats < 1 or not args.max_seconds > 0:
            parser.error(f"--size must be >= 32, --repeats >= 1 and --max-seconds > 0, got {args.size}, "
                         f"{args.repeats} and {args.max_seconds}")
        try:
            result = calibrate(size=args.size, repeats=args.repeats, max_seconds=args.max_seconds)
        except OSError as exc:  # WriteError names the path
            print(f"python -m segzoo.hardware: error: {exc}", file=sys.stderr)
            return 2
        except MachineBusyError as exc:  # nothing measured: the rules (or an older calibration) stay
            print(f"python -m segzoo.hardware: {exc}", file=sys.stderr)
            code = 1
        else:
            print(json.dumps(result["times_ms"], indent=1))
            if result["cached"]:
                print(f"cached in {cache_path()}")
            else:
                print(f"python -m segzoo.hardware: not cached: {result['not_cached']}; run it on an idle "
                      f"machine", file=sys.stderr)
                code = 1
    choice = preferred_layout("cpu")
    print(json.dumps(asdict(choice)))
    return code
