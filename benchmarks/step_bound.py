"""The bound on a time-to-Dice lead at equal epochs: how much of a tuned train step is the shared encoder.

segzoo's resnet34 U-Net and smp's share the torchvision ResNet-34 body, convolution for convolution. At equal
epochs to the target, no decoder or trainer change can make segzoo's epoch faster than the encoder's own
forward + backward + optimizer step. This script times, interleaved on one batch (bf16 autocast and
channels_last, as smp tuned by hand and segzoo's auto precision on a CPU with native bf16):

- ``smp-tuned``: ``smp.Unet("resnet34")``, one Adam train step;
- ``segzoo``: segzoo's ``resnet34_unet``, one Adam train step (eager), and compiled (``--compile``);
- ``encoder``: the ResNet-34 body alone (conv1 ... layer4, the sum of its outputs as the loss), one Adam step:
  what any U-Net on this encoder pays per step;
- the eval forward of each over the validation set's batch (what a validation adds per epoch).

It reports medians and the bound: ``(smp-tuned step x steps + its validation) / (encoder step x steps +
encoder validation)``: the largest speed-up at equal epochs that a zero-cost decoder and a zero-cost trainer
could reach.

    python -m benchmarks.step_bound                 # batch 16 at 128^2, the time-to-Dice protocol's step
    python -m benchmarks.step_bound --compile       # also torch.compile's step time and its compile time

Measure on a quiet machine (load below 1 at the start, recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.benchmark.measure import environment


class Body(nn.Module):
    """The ResNet-34 body of segzoo's U-Net alone: (B, 3, H, W) -> the sum of its five features' means."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(f.float().mean() for f in self.encoder(x))


def build(name: str) -> nn.Module:
    """The model named ``name`` (random weights, channels_last, train mode)."""
    from segzoo.models import create_model

    if name == "smp-tuned":
        import segmentation_models_pytorch as smp

        model = smp.Unet("resnet34", encoder_weights=None, classes=1)
    else:
        model = create_model("resnet34_unet", num_classes=1, pretrained=False)
        if name == "encoder":
            model = Body(model.encoder)
    return model.to(memory_format=torch.channels_last).train()


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, encoder_only: bool) -> Callable[[], None]:
    """One Adam train step under bf16 autocast (the loss in fp32)."""
    from segzoo.losses import BCEDiceLoss

    opt, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), BCEDiceLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        (out if encoder_only else loss_fn(out.float(), y)).backward()
        opt.step()

    return step


def eval_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One eval forward under bf16 autocast, no grad."""

    @torch.no_grad()
    def forward() -> None:
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        model.train()

    return forward


def main(argv: list[str] | None = None) -> int:
    """Time the steps; print and write ``step_bound.json`` to ``--out``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_bound", description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps-per-epoch", type=int, default=24, help="train steps per epoch (384 images / 16)")
    p.add_argument("--valid-batches", type=int, default=6, help="eval batches per epoch (96 images / 16)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (each: every model once, interleaved)")
    p.add_argument("--compile", action="store_true", help="also segzoo's step under torch.compile")
    p.add_argument("--out", default=None, help="folder for step_bound.json (default: print only)")
    p.add_argument("--force", action="store_true", help="replace an existing step_bound.json in --out")
    args = p.parse_args(argv)
    target = Path(args.out) / "step_bound.json" if args.out else None
    if target is not None and target.exists() and not args.force:
        p.error(f"{target} exists; pass --force to replace it")
    load = os.getloadavg()[0]
    if load > 1:
        print(f"warning: load average {load:.2f} at the start; times are not comparable", file=sys.stderr)
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(args.batch_size, 1, args.size, args.size) > 0.5).float()
    names = ["smp-tuned", "segzoo", "encoder"]
    models = {n: build(n) for n in names}
    fns = {n: step_fn(models[n], x, y, n == "encoder") for n in names}
    fns.update({f"{n} eval": eval_fn(models[n], x) for n in names})
    compile_s = None
    if args.compile:
        compiled = torch.compile(build("segzoo"))
        fns["segzoo compiled"] = step_fn(compiled, x, y, False)
        start = time.perf_counter()
        fns["segzoo compiled"]()
        fns["segzoo compiled"]()  # the first steps compile forward and backward
        compile_s = time.perf_counter() - start
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(args.rounds):
        order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
        for k in order:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    def epoch(name: str) -> float:
        return med[name] * args.steps_per_epoch + med[f"{name.split()[0]} eval"] * args.valid_batches

    result: dict[str, Any] = {
        "environment": environment(), "load_at_start": load, "settings": vars(args),
        "median_s": med, "epoch_compute_s": {n: epoch(n) for n in names + (["segzoo compiled"] if args.compile else [])},
        "compile_s": compile_s}
    result["bound_vs_smp_tuned"] = epoch("smp-tuned") / epoch("encoder")
    result["segzoo_vs_smp_tuned"] = epoch("smp-tuned") / epoch("segzoo")
    for k, v in med.items():
        print(f"{k:18s} {v * 1000:8.1f} ms")
    for k, v in result["epoch_compute_s"].items():
        print(f"epoch compute {k:16s} {v:6.2f} s")
    print(f"bound at equal epochs (smp-tuned / encoder alone): {result['bound_vs_smp_tuned']:.2f}x; "
          f"segzoo's model: {result['segzoo_vs_smp_tuned']:.2f}x" + (f"; compile took {compile_s:.1f} s" if compile_s else ""))
    if target is not None:
        from segzoo.fileio import write_bytes_atomic

        write_bytes_atomic(target, (json.dumps(result, indent=1, default=str) + "\n").encode(), overwrite=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
