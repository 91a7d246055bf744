"""``segzoo benchmark``: time and measure models, write JSON, markdown and PNG reports.

Arguments: :func:`segzoo.cli.args.add_benchmark_arguments` (also used by ``python -m
benchmarks.models``); the work: :mod:`segzoo.benchmark`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def specs_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The model specs selected by the command-line options."""
    from segzoo.benchmark import SMP_ARCHS, default_suite, segzoo_spec, smp_available, smp_spec

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
    import torch

    from segzoo.benchmark import (
        available_devices,
        check_result_name,
        environment,
        markdown_table,
        ratio_table,
        ratios,
        run_suite,
        with_layouts,
        write_results,
    )

    check_result_name(args.name)  # before any model is timed
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a file, expected a folder for the results")
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
