"""Per-machine choices: the memory layout segzoo's models run in, picked from measurements.

A convolution network on a CPU runs at different speeds in NCHW and in channels_last (NHWC),
and which one wins depends on the instruction set oneDNN can use and on the pass:

- AVX-512 (an Intel Xeon in earlier sessions, an AMD EPYC Zen 5 in this one): channels_last
  wins the forward and the train step.
- AVX2 only (a real AMD EPYC in issue 15): channels_last wins the forward (~15-20 %), but lost
  the train step by 6 %: oneDNN has no brgemm channels_last kernel for the *weight gradient* of a
  convolution on AVX2 (its ``jit:avx2`` NHWC kernel took 1.2-1.5x the blocked NCHW one for a resnet34
  Unet). On a newer core held to AVX2 the two layouts trained at the same speed: the rule follows
  the real AVX2 machine, and a calibration settles it per machine.

``channels_last="auto"`` (the models' default) therefore asks :func:`preferred_layout`, which
answers, in this order:

1. a calibration cached for this machine (:func:`segzoo.benchmark.calibration.calibrate`, run only
   when asked: it is never run implicitly), keyed by CPU model, ISA, torch version and thread count;
2. :data:`RULES`, keyed by ``torch.backends.cpu.get_cpu_capability()`` (``"AVX512"``, ``"AVX2"``...);
3. for ISAs nobody measured, channels_last in both passes (what segzoo did before this choice existed).

CUDA devices get channels_last in both passes (tensor cores want NHWC).

The calibration cache is ``$SEGZOO_CACHE_DIR/layout.json``, else ``$XDG_CACHE_HOME/segzoo/layout.json``,
else ``~/.cache/segzoo/layout.json``. Create it with ``segzoo hardware --calibrate``, on an
idle machine: a calibration during which other processes took CPU time is not cached. A cache
file that cannot be used (not a regular file, too large, too deeply nested, not a cache) is
ignored with one warning line naming it (:mod:`segzoo.hardware.cache`), never waited for.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segzoo.hardware.cache import read_cache

__all__ = ["LayoutChoice", "RULES", "cpu_capability", "cpu_model", "machine_key", "cache_path", "cached_layout",
           "preferred_layout", "resolve_layout"]

CACHE_FILE = "layout.json"
# names that moved above the models (issue 20): calibrating builds a model, and models read this module
_MOVED = {"calibrate": "segzoo.benchmark.calibration.calibrate",
          "MachineBusyError": "segzoo.benchmark.calibration.MachineBusyError",
          "LOAD_SAMPLE_SECONDS": "segzoo.benchmark.calibration.LOAD_SAMPLE_SECONDS",
          "main": "segzoo.cli.hardware.main (the command: segzoo hardware)"}


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
              f"(remove it; segzoo hardware --calibrate makes a new one)", file=sys.stderr)
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

    The cache is read once per machine key and process (a calibration refreshes it).
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


def __getattr__(name: str) -> Any:
    """Names that moved out of this module say where they went (this module never imports what is above it).

    Raises:
        ImportError: a moved name, naming its new place (an ImportError keeps its message through
            ``from segzoo.hardware import calibrate``).
        AttributeError: any other name.
    """
    if name in _MOVED:
        raise ImportError(f"segzoo.hardware.{name} moved to {_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
