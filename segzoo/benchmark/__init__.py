"""Benchmarks of segmentation models, and the ``segzoo benchmark`` command.

Measuring code lives in :mod:`segzoo.benchmark.measure`, model specs in
:mod:`segzoo.benchmark.specs`, reports in :mod:`segzoo.benchmark.report`. The
repository's ``benchmarks/`` scripts are thin callers of these functions.

Example::

    segzoo benchmark --encoders resnet34 --resolutions 256 512 --channels-last both
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from segzoo.benchmark.measure import (
    DTYPES,
    BenchConfig,
    count_gflops,
    count_params,
    environment,
    run_benchmark,
    throughput,
    time_block,
    train_step_memory,
)
from segzoo.benchmark.report import markdown_table, plot_throughput, ratio_table, ratios, write_results
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
           "ratio_table", "write_results", "plot_throughput", "ARCHS", "SMP_ARCHS", "segzoo_spec", "smp_spec",
           "body_spec", "build_model", "default_suite", "smp_available", "spec_label", "add_arguments", "run"]


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


def add_arguments(parser: argparse.ArgumentParser, command: str = "benchmark") -> None:
    """Options of ``segzoo benchmark`` (also used by ``python -m benchmarks.models``)."""
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="segzoo registry names (e.g. resnet34_unet); default: --encoders x --archs")
    parser.add_argument("--encoders", nargs="+", default=["resnet34"],
                        help="resnet18/34/50/... or timm:<name> (default: resnet34)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--no-smp", action="store_true", help="do not add the smp twin of each model")
    parser.add_argument("--no-body", action="store_true", help="do not add the ResNet encoder body alone")
    parser.add_argument("--devices", nargs="+", default=["cpu"], help="cpu and/or cuda (cuda skipped if absent)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES),
                        help="fp32, or bf16/fp16 autocast")
    parser.add_argument("--channels-last", choices=("off", "on", "both"), default="off",
                        help="convert models and inputs to channels_last")
    parser.add_argument("--compile", action="store_true", help="wrap models in torch.compile")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[4])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[256])
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per model and mode")
    parser.add_argument("--iterations", type=int, default=2, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per model and mode (median)")
    parser.add_argument("--num-classes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the train-step memory measurement")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="memory measurements per model, each in a fresh process (median)")
    parser.add_argument("--forward-only", action="store_true", help="time the forward pass only")
    parser.add_argument("--segzoo-layouts", nargs="+", default=["auto"], choices=("auto", "true", "false"),
                        help="segzoo's channels_last argument(s): auto (the default users get: the layout measured "
                             "fastest on this machine), true, false; several are timed side by side")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (json, md, png)")
    parser.add_argument("--name", default="benchmark", help="output file stem")


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


def specs_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The model specs selected by the command-line options."""
    with_smp = not args.no_smp and smp_available()
    if not args.no_smp and not with_smp:
        print("segmentation_models_pytorch is not installed: smp comparison skipped", file=sys.stderr)
    if not args.models:
        return default_suite(args.encoders, args.archs, with_smp=with_smp, with_body=not args.no_body)
    from segzoo.models import list_models

    specs = []
    for name in args.models:
        if name not in list_models():
            from segzoo.errors import unknown_name_error

            raise unknown_name_error("model", name, list_models())
        enc, _, arch = name.partition("_")
        if enc.startswith("resnet") and arch in SMP_ARCHS:
            specs.append(segzoo_spec(arch, enc))
            if with_smp:
                specs.append(smp_spec(arch, enc))
        else:
            specs.append({"library": "segzoo", "name": name, "kwargs": {}})
    return specs


def run(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the benchmark selected by ``args`` and write JSON, markdown and PNG to ``args.out``.

    ``command`` is the command line recorded in the reports (default: the program's name and arguments).
    """
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    devices = available_devices(args.devices)
    specs = with_layouts(specs_from_args(args), list(dict.fromkeys(getattr(args, "segzoo_layouts", ["auto"]))))
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    layouts = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    results = run_suite(specs, devices, args.dtypes, layouts, args.batch_sizes, args.resolutions,
                        warmup=args.warmup, iterations=args.iterations, repeats=args.repeats,
                        num_classes=args.num_classes, compile=args.compile, memory=not args.no_memory,
                        memory_repeats=args.memory_repeats, train=not args.forward_only)
    if command is None:
        command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    env = environment()
    env["load_average_start"] = load_start  # the load when timing began ("load_average": when it ended)
    paths = write_results(results, env, args.out, args.name, command)
    print(markdown_table(results))
    pairs = ratios(results)
    if pairs:
        print(ratio_table(pairs))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
