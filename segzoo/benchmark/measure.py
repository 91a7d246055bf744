"""Measuring speed and memory of segmentation models.

Models are described by plain-data specs (see :func:`build_model`) so the same model can
be rebuilt in a fresh subprocess for memory measurements. Method:

* warm-up iterations are run and excluded; on CUDA the timed region is bracketed by
  ``torch.cuda.synchronize()``;
* all models of one setting are timed *interleaved* (model A, model B, A, B, ...) in one
  process, so that machine drift affects every model alike; the reported figure is the
  median over ``repeats`` timed blocks of ``iterations`` calls;
* throughput (img/s) = batch x iterations / time of the block; data loading is excluded
  (one input tensor is reused);
* train step = forward + loss + backward + optimizer step (SGD), with autocast and a
  GradScaler for fp16 on CUDA;
* train-step peak memory: the peak of tensor memory allocated during the first train step,
  from ``torch.cuda.max_memory_allocated`` on CUDA and from torch's profiler memory events
  on CPU (plus the growth of the resident set size, a noisier process-level figure),
  measured in a fresh subprocess per model so allocations of other models cannot hide it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.benchmark.specs import build_model, spec_label

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
Clock = Callable[[], float]

__all__ = ["BenchConfig", "environment", "count_params", "count_gflops", "time_block", "throughput",
           "train_step_memory", "run_benchmark"]


@dataclass
class BenchConfig:
    """One benchmark setting.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast.
        channels_last: convert the models and inputs to channels_last (as a user would).
        compile: wrap the models in ``torch.compile``.
        batch_size: B of the (B, 3, H, W) input.
        resolution: H = W of the input.
        warmup: untimed iterations before timing (per model and mode).
        iterations: calls per timed block.
        repeats: timed blocks per model and mode (the median is reported).
        num_classes: output channels of the models.
        memory: measure train-step peak memory.
        memory_repeats: memory measurements per model (fresh processes, interleaved between
            models like the timings; the median is reported: RSS peaks vary by tens of MiB).
        train: also time the train step (``False``: forward only, e.g. for resolution sweeps).
    """

    device: str = "cpu"
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    batch_size: int = 4
    resolution: int = 256
    warmup: int = 2
    iterations: int = 2
    repeats: int = 5
    num_classes: int = 1
    memory: bool = True
    memory_repeats: int = 3
    train: bool = True

    def validate(self) -> None:
        """Raise ValueError for a setting that cannot run here."""
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("batch_size", "resolution", "iterations", "repeats", "num_classes", "memory_repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")


TIMING_ENV_PREFIXES = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "OMP_", "KMP_", "MKL_", "DNNL_", "ONEDNN_",
                       "THP_MEM_ALLOC_ENABLE", "ATEN_CPU_CAPABILITY", "SEGZOO_CACHE_DIR")


def environment() -> dict[str, Any]:
    """Versions, device, CPU model and ISA, thread count and settings, recorded with every result.

    ``cpu_capability`` is the ISA torch's CPU kernels dispatch to (``"AVX512"``, ``"AVX2"``...; the
    ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` variables in ``env_vars`` can lower it), and
    ``segzoo_layout`` the layout segzoo's ``channels_last="auto"`` picked here.
    """
    from segzoo import hardware

    cpu = hardware.cpu_model()
    layout = hardware.preferred_layout("cpu")
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "cpu": cpu, "cpu_capability": hardware.cpu_capability(), "cpu_isa_flags": _isa_flags(),
        "segzoo_layout": {"forward_channels_last": layout.forward, "train_channels_last": layout.train,
                          "source": layout.source},
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # settings that change CPU timings (allocator, OpenMP); see BENCHMARKS.md
        "env_vars": {k: v for k, v in sorted(os.environ.items()) if k.startswith(TIMING_ENV_PREFIXES)},
    }
    try:
        import segmentation_models_pytorch as smp
        env["smp"] = smp.__version__
    except ImportError:
        env["smp"] = None
    from segzoo import __version__
    env["segzoo"] = __version__
    return env


def _isa_flags() -> list[str]:
    """The CPU's vector ISA flags (avx2, avx512f, amx_tile...) from ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOP (multiply and add counted separately) for input ``x`` (B, C, H, W)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def throughput(batch_size: int, iterations: int, seconds: float) -> float:
    """Images per second: ``batch_size * iterations / seconds``."""
    if seconds <= 0:
        raise ValueError(f"elapsed time must be positive, got {seconds!r}")
    return batch_size * iterations / seconds


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_block(fn: Callable[[], Any], iterations: int, device: str = "cpu", clock: Clock = time.perf_counter) -> float:
    """Seconds taken by ``iterations`` calls of ``fn`` (synchronized before and after on CUDA)."""
    _sync(device)
    start = clock()
    for _ in range(iterations):
        fn()
    _sync(device)
    return clock() - start


class _Runner:
    """A model with its optimizer, input and the forward / train-step closures."""

    def __init__(self, spec: dict[str, Any], cfg: BenchConfig) -> None:
        self.spec = spec
        self.label = spec_label(spec)
        torch.manual_seed(0)
        model = build_model(spec, cfg.num_classes).to(cfg.device)
        self.params = count_params(model)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.x = torch.randn(cfg.batch_size, 3, cfg.resolution, cfg.resolution, device=cfg.device)
        self.x = self.x.contiguous(memory_format=fmt)
        self.y = (torch.rand(cfg.batch_size, cfg.num_classes, cfg.resolution, cfg.resolution,
                             device=cfg.device) > 0.5).float()
        self.gflops = count_gflops(model, self.x)
        self.model = torch.compile(model) if cfg.compile else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        dtype = DTYPES[cfg.dtype]
        self.autocast = (lambda: torch.autocast(cfg.device, dtype=dtype)) if dtype is not None else nullcontext
        use_scaler = cfg.device == "cuda" and cfg.dtype == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def forward(self) -> None:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            self.model(self.x)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.model(self.x).float()
            # segmentation models: BCE on the logits; an encoder body: any scalar of its output
            loss = F.binary_cross_entropy_with_logits(out, self.y) if out.shape == self.y.shape else out.mean()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def train_step_memory(spec: dict[str, Any], cfg: BenchConfig) -> dict[str, float]:
    """Peak memory of one train step of ``spec``'s model, in MiB, measured in this process.

    ``train_peak_mib`` is the peak of tensor memory allocated during the first train step
    (activations, gradients, optimizer state, workspaces) above what was allocated before it:
    on CUDA from ``max_memory_allocated``; on CPU from torch's profiler (``profile_memory``),
    whose allocation events are replayed in time order. On CPU two process-level figures are
    added: ``train_rss_delta_mib``, the highest resident set size seen during the first step
    (sampled every millisecond, and the kernel's peak RSS when that rose) minus the RSS before
    it, and ``peak_rss_mib``; they include allocator caching and library workspaces and vary
    by tens of MiB between runs of the same model. Run it in a fresh process per model
    (:func:`run_benchmark` does) for figures comparable between models.
    """
    eager = BenchConfig(**{**asdict(cfg), "compile": False})
    runner = _Runner(spec, eager)
    if cfg.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        runner.train_step()
        torch.cuda.synchronize()
        return {"train_peak_mib": (torch.cuda.max_memory_allocated() - before) / 2**20}
    before, kernel_peak_before = _rss_bytes(), _peak_rss_bytes()
    sampled = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sampled.append(_rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        runner.train_step()
    finally:
        done.set()
        thread.join()
    kernel_peak = _peak_rss_bytes()
    # the kernel's high-water mark counts only if this step raised it: a process started with
    # fork + exec inherits its parent's high-water mark (the benchmark process, many models big)
    peak = max(max(sampled), kernel_peak if kernel_peak > kernel_peak_before else 0)
    del runner
    # a fresh model, so that its first step allocates gradients and optimizer state as on CUDA
    allocated = _allocated_peak_bytes(_Runner(spec, eager).train_step)
    return {"train_peak_mib": allocated / 2**20, "train_rss_delta_mib": (peak - before) / 2**20,
            "peak_rss_mib": peak / 2**20}


def _allocated_peak_bytes(step: Callable[[], Any]) -> int:
    """Peak of live CPU tensor bytes allocated during ``step()``, from torch's profiler memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage  # allocations minus frees inside the op itself
        peak = max(peak, live)
    return peak


def _memory_in_subprocess(spec: dict[str, Any], cfg: BenchConfig) -> dict[str, float]:
    payload = json.dumps({"spec": spec, "config": asdict(cfg)})
    proc = subprocess.run([sys.executable, "-m", "segzoo.benchmark.worker", payload],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {spec_label(spec)} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(specs: Sequence[dict[str, Any]], cfg: BenchConfig, clock: Clock = time.perf_counter,
                  memory_fn: Callable[[dict[str, Any], BenchConfig], dict[str, float]] | None = None,
                  log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Benchmark ``specs`` interleaved under one setting; one result dict per spec.

    Args:
        specs: model specs (see :func:`build_model`).
        cfg: the setting.
        clock: time source in seconds (injectable for tests).
        memory_fn: memory measurement (default: a fresh subprocess per model); used when ``cfg.memory``.
        log: progress printer.

    Returns:
        dicts with the spec, setting, params, gflops, median forward/train-step seconds per
        batch, img/s, achieved GFLOP/s, all block times and (optionally) memory.
    """
    cfg.validate()
    if not specs:
        raise ValueError("no models to benchmark")
    runners = [_Runner(spec, cfg) for spec in specs]
    for r in runners:
        for _ in range(cfg.warmup):
            r.forward()
            if cfg.train:
                r.train_step()
    fwd: dict[int, list[float]] = {i: [] for i in range(len(runners))}
    train: dict[int, list[float]] = {i: [] for i in range(len(runners))}
    for rep in range(cfg.repeats):
        for i, r in enumerate(runners):
            fwd[i].append(time_block(r.forward, cfg.iterations, cfg.device, clock))
            if cfg.train:
                train[i].append(time_block(r.train_step, cfg.iterations, cfg.device, clock))
        if log:
            log(f"  repeat {rep + 1}/{cfg.repeats} done")
    results = []
    for i, r in enumerate(runners):
        f_med = statistics.median(fwd[i])
        res: dict[str, Any] = {
            "label": r.label, "spec": r.spec, "config": asdict(cfg), "params": r.params, "gflops": r.gflops,
            "forward_ms": 1000 * f_med / cfg.iterations,
            "forward_img_s": throughput(cfg.batch_size, cfg.iterations, f_med),
            "achieved_gflop_s": r.gflops * cfg.iterations / f_med, "forward_block_s": fwd[i],
        }
        if cfg.train:
            t_med = statistics.median(train[i])
            res.update(train_ms=1000 * t_med / cfg.iterations, train_block_s=train[i],
                       train_img_s=throughput(cfg.batch_size, cfg.iterations, t_med))
        results.append(res)
    del runners
    if cfg.memory and cfg.train:
        memory_fn = memory_fn or _memory_in_subprocess
        samples: list[list[dict[str, float]]] = [[] for _ in results]
        for _ in range(cfg.memory_repeats):
            for res, seen in zip(results, samples):
                seen.append(memory_fn(res["spec"], cfg))
        for res, seen in zip(results, samples):
            res.update({k: statistics.median(m[k] for m in seen) for k in seen[0]})
            if "train_peak_mib" in seen[0]:
                res["train_peak_mib_samples"] = [m["train_peak_mib"] for m in seen]
    return results
