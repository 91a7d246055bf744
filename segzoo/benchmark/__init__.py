"""Benchmarks of segmentation models (the ``segzoo benchmark`` command is :mod:`segzoo.cli.benchmark`).

Measuring code lives in :mod:`segzoo.benchmark.measure` (the layout calibration of
:mod:`segzoo.hardware` in :mod:`segzoo.benchmark.calibration`), model specs in
:mod:`segzoo.benchmark.specs`, reports in :mod:`segzoo.benchmark.report`. The
repository's ``benchmarks/`` scripts are thin callers of these functions.

Example::

    segzoo benchmark --encoders resnet34 --resolutions 256 512 --channels-last both
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from segzoo.benchmark.calibration import MachineBusyError, calibrate
from segzoo.benchmark.measure import (
    BenchConfig,
    count_gflops,
    count_params,
    environment,
    run_benchmark,
    throughput,
    time_block,
    train_step_memory,
)
from segzoo.benchmark.report import (
    check_result_name,
    markdown_table,
    plot_throughput,
    ratio_table,
    ratios,
    write_results,
)
from segzoo.benchmark.specs import (
    ARCHS,
    SMP_ARCHS,
    body_spec,
    build_model,
    default_suite,
    segzoo_spec,
    smp_available,
    smp_spec,
    spec_label,
)

__all__ = ["BenchConfig", "environment", "count_params", "count_gflops", "time_block", "throughput", "with_layouts",
           "train_step_memory", "run_benchmark", "run_suite", "available_devices", "ratios", "markdown_table",
           "ratio_table", "check_result_name", "write_results", "plot_throughput", "ARCHS", "SMP_ARCHS", "segzoo_spec", "smp_spec",
           "body_spec", "build_model", "default_suite", "smp_available", "spec_label", "calibrate", "MachineBusyError"]

_COMMAND = {"run": "segzoo.cli.benchmark.run", "add_arguments": "segzoo.cli.args.add_benchmark_arguments"}


def __getattr__(name: str) -> object:
    """The command's ``run`` / ``add_arguments`` live in :mod:`segzoo.cli` (the library does not import it).

    Raises:
        ImportError: ``run`` or ``add_arguments``, naming where they live (an ImportError keeps its
            message through ``from segzoo.benchmark import run``).
        AttributeError: any other name.
    """
    if name in _COMMAND:
        raise ImportError(f"segzoo.benchmark.{name} is the command line's: use {_COMMAND[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_devices(requested: Sequence[str], log: Callable[[str], None] = print) -> list[str]:
    """The requested devices that exist here; CUDA is skipped with a message when absent.

    Raises:
        ValueError: an unknown device name, or none of the requested devices available.
    """
    devices = []
    for d in requested:
        if d not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {d!r}; expected 'cpu' or 'cuda'")
        if d == "cuda" and not torch.cuda.is_available():
            log("skipping device cuda: CUDA is not available on this machine")
            continue
        devices.append(d)
    if not devices:
        raise ValueError(f"none of the requested devices {list(requested)} is available")
    return devices


def run_suite(specs: Sequence[dict[str, Any]], devices: Sequence[str] = ("cpu",), dtypes: Sequence[str] = ("fp32",),
              channels_last: Sequence[bool] = (False,), batch_sizes: Sequence[int] = (4,),
              resolutions: Sequence[int] = (256,), log: Callable[[str], None] | None = print,
              **config: Any) -> list[dict[str, Any]]:
    """Run :func:`run_benchmark` for every setting (device x dtype x layout x batch x resolution).

    Args:
        specs: model specs, all timed interleaved within each setting.
        devices: ``"cpu"`` / ``"cuda"`` (check with :func:`available_devices` first).
        dtypes: ``"fp32"``, ``"bf16"``, ``"fp16"``.
        channels_last: layouts to run (False = NCHW).
        batch_sizes: batch sizes B.
        resolutions: input sizes H = W.
        log: progress printer (``None``: silent).
        **config: other :class:`BenchConfig` fields (warmup, iterations, repeats, compile, memory...).

    Returns:
        All result dicts.
    """
    results: list[dict[str, Any]] = []
    for device, dtype, cl, batch, res in itertools.product(devices, dtypes, channels_last, batch_sizes, resolutions):
        cfg = BenchConfig(device=device, dtype=dtype, channels_last=cl, batch_size=batch, resolution=res, **config)
        cfg.validate()
        if log:
            log(f"{device} {dtype} channels_last={cl} batch={batch} resolution={res}: {len(specs)} models")
        results += run_benchmark(specs, cfg, log=log)
        if log:
            for r in results[-len(specs):]:
                log(f"  {r['label']:<34} fwd {r['forward_ms']:8.1f} ms  train {r.get('train_ms', float('nan')):8.1f} ms")
    return results


def with_layouts(specs: Sequence[dict[str, Any]], layouts: Sequence[str]) -> list[dict[str, Any]]:
    """Each segzoo spec once per ``channels_last`` value in ``layouts`` (``"auto"`` / ``"true"`` / ``"false"``;
    ``"auto"`` is the constructor default and adds no argument); other specs unchanged."""
    out = []
    for spec in specs:
        if spec.get("library") != "segzoo":
            out.append(spec)
            continue
        for layout in layouts:
            if layout == "auto":
                out.append(spec)
            else:
                out.append({**spec, "kwargs": {**spec.get("kwargs", {}), "channels_last": layout == "true"}})
    return out
