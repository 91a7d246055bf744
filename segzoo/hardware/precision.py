"""Per-machine precision of a training run: bf16 autocast where the device computes bf16 natively.

``precision="auto"`` (the trainer's default) resolves, through :func:`preferred_precision`, to:

1. ``fp32`` where the device has no native bf16: a CPU without AVX512-BF16 / AMX-BF16, or one on which
   torch or oneDNN are held below AVX-512 (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``);
   a CUDA device below sm80. bf16 emulated in fp32 units costs conversions and saves nothing.
2. on a CPU with native bf16: the result of a short measurement (a small convolution network's
   train step in fp32 and in bf16 autocast, interleaved, fastest of each), cached in the layout
   cache file (:func:`segzoo.hardware.cache_path`, the same file and reader) under
   :func:`precision_key`; measured once per machine and torch version, cached only when other
   processes left the CPUs alone meanwhile (:mod:`segzoo.hardware.load`), else used for this run only;
3. a CUDA device of sm80 or newer: bf16.

``SEGZOO_PRECISION=fp32|bf16|fp16`` overrides ``"auto"`` machine-wide (the test suite sets fp32).
Losses, metrics and optimizer state stay float32 whatever is chosen: autocast only runs the
model's matrix products and convolutions in bf16.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from segzoo.hardware.cache import read_cache

__all__ = ["PRECISIONS", "PrecisionChoice", "forced_precision", "measure_bf16_speedup", "native_bf16", "precision_key",
           "preferred_precision"]

PRECISIONS = ("fp32", "bf16", "fp16")
ENV = "SEGZOO_PRECISION"
#: bf16 must beat fp32 by this much in the measurement to be chosen.
MARGIN = 0.05


@dataclass(frozen=True)
class PrecisionChoice:
    """The autocast precision of a run (``"fp32"``: none) and where the choice came from."""

    precision: str
    source: str


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and the reason (e.g. ``"AVX512-BF16"``, ``"sm75 < sm80"``)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"sm{major}{minor}" + ("" if major >= 8 else " < sm80")
    if device.type != "cpu":
        return False, f"{device.type} device"
    flags = _cpu_flags()
    native = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if flag in flags]
    if not native:
        return False, "no AVX512-BF16 / AMX-BF16 in the CPU flags"
    capability = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")())
    if not capability.startswith("AVX512"):
        return False, f"torch's CPU kernels run at {capability}"
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    if not onednn:
        return False, "oneDNN has no bf16 here (ONEDNN_MAX_CPU_ISA?)"
    return True, " + ".join(native)


def precision_key() -> str:
    """Cache key of the precision measurement: CPU model, ISA and torch version (not the thread count)."""
    from segzoo.hardware import cpu_capability, cpu_model

    return f"precision | {cpu_model()} | {cpu_capability()} | torch {torch.__version__}"


def measure_bf16_speedup(repeats: int = 3, size: int = 32, batch: int = 8, channels: int = 64) -> dict[str, float | None]:
    """Fastest train step of two conv-BN-ReLU blocks (``channels`` wide, B x C x size x size, a ResNet stage's
    work) in fp32 and in bf16 autocast, interleaved.

    Under a second on a CPU. Returns ``{"fp32_ms", "bf16_ms", "other_cpus"}`` (``other_cpus``: CPUs
    other processes used meanwhile, ``None`` where unknown).
    """
    from segzoo.hardware.load import LoadProbe

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                        nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().square().mean().backward()
        net.zero_grad(set_to_none=True)
        return 1000 * (time.perf_counter() - start)

    probe = LoadProbe().start()
    for bf16 in (False, True, False, True):  # warm-up: oneDNN builds its kernels
        step(bf16)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    return {"fp32_ms": min(times[False]), "bf16_ms": min(times[True]), "other_cpus": probe.other_cpus()}


def _warn(path: Path, reason: str) -> None:
    print(f"segzoo: warning: ignoring the layout cache {path}: {reason}; precision measured for this run only",
          file=sys.stderr)


def _measured_choice(measure: Callable[[], dict] | None, path: Path) -> PrecisionChoice:
    """The cached measurement for this machine, else a new one (cached when the machine was quiet);
    ``measure`` ``None``: bf16 (the rule) when nothing is cached."""
    from segzoo.hardware.load import busy_threshold

    key = precision_key()
    entries, unusable = read_cache(path)
    if unusable is not None:
        _warn(path, unusable)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16"):
        return PrecisionChoice(entry["precision"], f"measured (cached in {path})")
    if measure is None:
        return PrecisionChoice("bf16", "rule (not measured)")
    result = measure()
    chosen = "bf16" if result["bf16_ms"] < result["fp32_ms"] * (1 - MARGIN) else "fp32"
    times = f"fp32 {result['fp32_ms']:.1f} ms, bf16 {result['bf16_ms']:.1f} ms"
    others = result.get("other_cpus")
    if unusable is None and others is not None and others <= busy_threshold():
        from segzoo.fileio import write_json_atomic

        entries[key] = {"precision": chosen, "fp32_ms": round(result["fp32_ms"], 3),
                        "bf16_ms": round(result["bf16_ms"], 3), "date": time.strftime("%Y-%m-%d")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(entries, path, overwrite=True)
            return PrecisionChoice(chosen, f"measured ({times}; cached in {path})")
        except OSError as exc:
            return PrecisionChoice(chosen, f"measured ({times}; not cached: {exc})")
    return PrecisionChoice(chosen, f"measured ({times}; not cached: the machine was busy)")


@functools.lru_cache(maxsize=8)
def _cpu_choice(path: str, key: str, measure: bool = True) -> PrecisionChoice:
    native, why = native_bf16("cpu")
    if not native:
        return PrecisionChoice("fp32", f"rule: {why}")
    choice = _measured_choice(_MEASURE[0] if measure else None, Path(path))
    return PrecisionChoice(choice.precision, f"{why}, {choice.source}")


# the measurement auto uses (tests replace it: nothing is timed in the test suite)
_MEASURE: list[Callable[[], dict]] = [measure_bf16_speedup]


def forced_precision() -> str | None:
    """The precision ``SEGZOO_PRECISION`` forces on ``"auto"`` (``None``: unset or ``auto``).

    Raises:
        ValueError: another value, naming the variable.
    """
    forced = os.environ.get(ENV, "").strip().lower()
    if not forced or forced == "auto":
        return None
    if forced not in PRECISIONS:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: must be one of {', '.join(PRECISIONS)} or auto")
    return forced


def preferred_precision(device: str | torch.device = "cpu", measure: bool = True) -> PrecisionChoice:
    """What ``precision="auto"`` runs in on ``device`` (see the module docstring for the order).

    The CPU measurement runs at most once per process and machine key (and once per machine when cached);
    ``measure=False`` (the processes of a distributed run, which must agree) takes a cached one or the rule.
    """
    from segzoo.hardware import cache_path

    forced = forced_precision()
    if forced is not None:
        return PrecisionChoice(forced, f"{ENV}={forced}")
    device = torch.device(device)
    if device.type == "cuda":
        native, why = native_bf16(device)
        return PrecisionChoice("bf16" if native else "fp32", f"rule: {why}")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"rule: {device.type} device")
    return _cpu_choice(str(cache_path()), precision_key(), measure)
