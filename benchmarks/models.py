"""Speed/memory benchmark of segzoo models against smp 0.6, with the project's target checks.

Same options as ``segzoo benchmark`` (see ``--help``), plus presets:

    python -m benchmarks.models --preset targets   # resnet34, 4x3x256^2 and 512^2, CL off/on
    python -m benchmarks.models --preset full      # every arch x resnet18/34/50 + a timm encoder, 256/512/1024
    python -m benchmarks.models --preset gpu       # CUDA, fp16 autocast, channels_last, batch 8 (skipped without CUDA)

Writes ``<name>.json``, ``<name>.md``, ``<name>.png`` and ``<name>-targets.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import segzoo.benchmark as bench
from segzoo.cli.args import add_benchmark_arguments
from segzoo.cli.benchmark import run

PRESETS: dict[str, list[str]] = {
    "targets": ["--encoders", "resnet34", "--resolutions", "256", "512", "--channels-last", "both"],
    "full": ["--encoders", "resnet18", "resnet34", "resnet50", "timm:efficientnet_b0",
             "--resolutions", "256", "512", "1024", "--repeats", "3", "--iterations", "1"],
    "gpu": ["--devices", "cuda", "--dtypes", "fp16", "bf16", "--channels-last", "on", "--batch-sizes", "8",
            "--resolutions", "256", "512", "1024", "--iterations", "10", "--warmup", "5"],
}

# smp / segzoo time ratio wanted at 4 x 3 x 256 x 256 fp32 (issue 15), per pass, with the default memory
# format (CL off: NCHW tensors in, segzoo's own layout choice inside), for the architectures issue 15 set a
# target for (others: 1.0; tests/test_benchmark.py checks the keys are architectures with an smp twin) ...
# ... and issue 21's for UNet++ and MA-Net (whose decoders are most of smp's FLOPs): >= 1.5x in both passes
SPEEDUP_TARGETS = {"unet": 1.3, "linknet": 1.3, "fpn_unet": 1.3, "pspnet": 1.1,  # train step
                   "unetplusplus": 1.5, "manet": 1.5}
FORWARD_TARGETS = {"unet": 1.5, "linknet": 1.5, "fpn_unet": 1.8, "pspnet": 1.3, "unetplusplus": 1.5, "manet": 1.5}
# ... and with both libraries' models and inputs converted to channels_last by the caller (CL on): 1.2x (issue 15),
# issue 21's 1.5x for UNet++ and MA-Net in both passes
CHANNELS_LAST_TARGET = 1.2
CHANNELS_LAST_TARGETS = {"unetplusplus": 1.5, "manet": 1.5}


def speedup_target(arch: str, train: bool, channels_last: bool) -> float:
    """The smp/segzoo time ratio wanted for ``arch`` in one pass and memory format."""
    if channels_last:
        return CHANNELS_LAST_TARGETS.get(arch, CHANNELS_LAST_TARGET)
    return (SPEEDUP_TARGETS if train else FORWARD_TARGETS).get(arch, 1.0)


def _key(r: dict[str, Any]) -> tuple:
    c = r["config"]
    return c["device"], c["dtype"], c["channels_last"], c["batch_size"]


def target_report(results: Sequence[dict[str, Any]]) -> str:
    """Markdown summary of the speed, GFLOP/s, scaling and memory targets for the measured settings."""
    lines = ["| check | setting | value | target | met |", "| --- | --- | --- | --- | --- |"]

    def add(check: str, setting: str, value: float, target: str, ok: bool) -> None:
        lines.append(f"| {check} | {setting} | {value:.2f} | {target} | {'yes' if ok else 'NO'} |")

    for p in bench.ratios(results):
        arch = p["pair"].split("/")[-1]
        setting = f"{p['device']} {p['dtype']} B={p['batch_size']} {p['resolution']}px CL={'on' if p['channels_last'] else 'off'}"
        pair = f"{p['pair']} [{p['variant']}]" if p.get("variant") else p["pair"]
        want = speedup_target(arch, False, p["channels_last"])
        add(f"{pair} forward speed-up vs smp", setting, p["forward_speedup"], f">= {want}",
            p["forward_speedup"] >= want)
        if p["train_speedup"] is not None:
            want = speedup_target(arch, True, p["channels_last"])
            add(f"{pair} train-step speed-up vs smp", setting, p["train_speedup"], f">= {want}",
                p["train_speedup"] >= want)
        if "memory_ratio" in p:
            add(f"{p['pair']} train-step peak memory segzoo/smp", setting, p["memory_ratio"], "<= 1.0",
                p["memory_ratio"] <= 1.0)
    for r in results:
        spec, c = r["spec"], r["config"]
        if spec.get("library") != "segzoo" or "pair" not in spec:
            continue
        enc = spec["pair"].split("/")[0]
        setting = f"{c['device']} {c['dtype']} B={c['batch_size']} {c['resolution']}px CL={'on' if c['channels_last'] else 'off'}"
        body = next((b for b in results if b["spec"] == bench.body_spec(enc) and b["config"] == c), None)
        if body is not None:
            ratio = r["achieved_gflop_s"] / body["achieved_gflop_s"]
            add(f"{spec['pair']} GFLOP/s vs encoder body", setting, ratio, ">= 0.9", ratio >= 0.9)
        if c["resolution"] == 256:
            big = next((b for b in results if b["spec"] == spec and _key(b) == _key(r)
                        and b["config"]["resolution"] == 512), None)
            if big is not None:
                ratio = big["forward_ms"] / r["forward_ms"]
                add(f"{spec['pair']} forward time 512^2 / 256^2", setting, ratio, "<= 4.2", ratio <= 4.2)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (a preset's options first, explicit options override them)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    add_benchmark_arguments(parser)
    pre, _ = parser.parse_known_args(argv)
    preset_args = PRESETS[pre.preset] if pre.preset else []
    if pre.preset == "gpu" and not torch.cuda.is_available():
        print("preset gpu: CUDA is not available on this machine, nothing to run (skipped)")
        return 0
    args = parser.parse_args(preset_args + argv)
    code = run(args, command=" ".join([parser.prog, *(shlex.quote(a) for a in argv)]))
    results = json.loads((Path(args.out) / f"{args.name}.json").read_text())["results"]
    report = target_report(results)
    (Path(args.out) / f"{args.name}-targets.md").write_text(report + "\n")
    print(report)
    return code


if __name__ == "__main__":
    sys.exit(main())
