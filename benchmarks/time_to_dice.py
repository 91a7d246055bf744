"""Time to Dice (issue 23): wall time until a resnet34 U-Net reaches valid Dice 0.95, three ways.

Protocol: a resnet34 U-Net (random weights) at 128 x 128, 384 procedural training images and 96
validation images (:class:`segzoo.data.ProceduralSegmentation`, seeds 0 and 1), BCE + Dice loss
(``segzoo.losses.BCEDiceLoss``), Adam 1e-3, batch 16, shuffled with the same seed, validation after
every epoch, an epoch budget (default 10). The contenders:

- ``segzoo``: ``SupervisedRunner().train`` with its defaults (precision, threads, layout as it picks
  them; its default checkpoints and console log are part of its time) on segzoo's ``resnet34_unet``;
- ``smp``: segmentation_models_pytorch 0.6 ``smp.Unet("resnet34")`` in a plain PyTorch loop, fp32, as
  its examples train;
- ``smp-tuned``: the same loop tuned by hand: channels_last model and inputs, bf16 autocast.

All three see the same tensors (built once, in memory) and the same batch order, and score the
validation set with one Dice definition: segzoo.metrics' per-class sums over the whole set,
predictions thresholded at 0.5 (what ``DiceCallback(threshold=0.5)`` reports). Runs are interleaved
(contender order rotates every repeat); the medians over ``--repeats`` are reported. Time counts from
the first training step's setup (model built, optimizer made) to each epoch's validation end.

    python -m benchmarks.time_to_dice                      # the protocol, 2 repeats (tens of minutes)
    python -m benchmarks.time_to_dice --quick --out /tmp/t  # a seconds-long smoke run

Writes ``time_to_dice.json`` (every epoch's time and Dice, the CPU model, ISA flags, load at start)
and ``time_to_dice.png`` (Dice against wall time, all runs) to ``--out``; refuses to replace them
unless ``--force``. Measure on a quiet machine: the load at start is recorded and a warning printed
above 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

CONTENDERS = ("segzoo", "smp", "smp-tuned")
#: besides the protocol's three: segzoo's trainer with ``precision="fp32"`` forced (the issue's "no slower than today")
EXTRA_CONTENDERS = ("segzoo-fp32",)
FILES = ("time_to_dice.json", "time_to_dice.png")


def make_data(n_train: int, n_valid: int, size: int) -> dict[str, torch.Tensor]:
    """The procedural task as tensors: ``{"x_train": (N, 3, S, S) float, "y_train": (N, 1, S, S) {0, 1}, ...}``."""
    from segzoo.data import ProceduralSegmentation

    out = {}
    for split, n, seed in (("train", n_train, 0), ("valid", n_valid, 1)):
        ds = ProceduralSegmentation(n, image_size=size, num_classes=1, seed=seed)
        items = [ds[i] for i in range(n)]
        out[f"x_{split}"] = torch.stack([torch.as_tensor(it["features"]) for it in items]).float()
        out[f"y_{split}"] = torch.stack([torch.as_tensor(it["targets"]) for it in items]).float()
    return out


def loaders(data: dict[str, torch.Tensor], batch_size: int, seed: int) -> dict[str, DataLoader]:
    """Train (shuffled by a generator seeded ``seed``: the same order for every contender) and valid loaders."""
    g = torch.Generator().manual_seed(seed)
    return {"train": DataLoader(TensorDataset(data["x_train"], data["y_train"]), batch_size=batch_size,
                                shuffle=True, generator=g),
            "valid": DataLoader(TensorDataset(data["x_valid"], data["y_valid"]), batch_size=batch_size)}


@torch.no_grad()
def valid_dice(model: nn.Module, loader: DataLoader, autocast: Any, channels_last: bool) -> float:
    """Dice of the whole valid set: segzoo.metrics' summed intersections and sums, threshold 0.5."""
    from segzoo.metrics import dice_from_sums, segmentation_sums

    model.eval()
    total = None
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        sums = torch.stack(segmentation_sums(logits.float(), y, threshold=0.5))
        total = sums if total is None else total + sums
    return float(dice_from_sums(*total).mean())


def plain_loop(model: nn.Module, data: dict[str, torch.Tensor], args: argparse.Namespace, seed: int,
               tuned: bool) -> list[tuple[float, float]]:
    """smp's way: a plain PyTorch loop; ``tuned``: channels_last and bf16 autocast. Returns ``[(seconds, dice)]``."""
    from segzoo.losses import BCEDiceLoss

    start = time.perf_counter()
    if tuned:
        model = model.to(memory_format=torch.channels_last)

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if tuned else contextlib.nullcontext()

    criterion, optimizer = BCEDiceLoss(), torch.optim.Adam(model.parameters(), lr=args.lr)
    ld = loaders(data, args.batch_size, seed)
    curve = []
    for _ in range(args.epochs):
        model.train()
        for x, y in ld["train"]:
            if tuned:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = model(x)
            criterion(logits.float(), y).backward()
            optimizer.step()
        curve.append((time.perf_counter() - start, valid_dice(model, ld["valid"], autocast, tuned)))
    return curve


def segzoo_run(model: nn.Module, data: dict[str, torch.Tensor], args: argparse.Namespace,
               seed: int, **settings: Any) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """segzoo's trainer with its defaults (``settings``: train() keywords that override them, e.g.
    ``precision="fp32"``). Returns ``[(seconds, dice)]`` and what it chose (threads, precision...)."""
    from segzoo.losses import BCEDiceLoss
    from segzoo.training import Callback, CallbackOrder, SupervisedRunner
    from segzoo.training.callbacks import DiceCallback

    curve: list[tuple[float, float]] = []

    class Clock(Callback):
        def __init__(self) -> None:
            super().__init__(CallbackOrder.Other)

        def on_epoch_end(self, state: Any) -> None:
            curve.append((time.perf_counter() - start, float(state.valid_metrics["dice"])))

    start = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    with tempfile.TemporaryDirectory(prefix="time_to_dice_") as logdir, contextlib.redirect_stdout(io.StringIO()):
        state = SupervisedRunner().train(model, BCEDiceLoss(), optimizer, loaders(data, args.batch_size, seed),
                                         Path(logdir) / "run", callbacks=[DiceCallback(threshold=0.5), Clock()],
                                         num_epochs=args.epochs, main_metric="dice", minimize_metric=False,
                                         **settings)
    chosen = {k: state.checkpoint_data.get(k) for k in ("threads", "precision", "layout", "compile")}
    return curve, chosen


def build(contender: str, arch: str) -> nn.Module:
    """The contender's U-Net (B, 3, H, W) -> (B, 1, H, W), random weights."""
    if contender.startswith("segzoo"):
        from segzoo.models import create_model

        return create_model(f"{arch}_unet", num_classes=1, pretrained=False)
    import segmentation_models_pytorch as smp

    return smp.Unet(arch, encoder_weights=None, classes=1)


def time_to(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """Seconds until the first epoch whose Dice reaches ``target`` (``None``: not within the budget)."""
    return next((t for t, d in curve if d >= target), None)


def run_all(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every contender ``args.repeats`` times, interleaved; returns the runs and the medians per contender."""
    data = make_data(args.n_train, args.n_valid, args.size)
    runs = []
    default_threads = torch.get_num_threads()
    contenders = tuple(args.contenders)
    for repeat in range(args.repeats):
        shift = repeat % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for contender in order:
            torch.set_num_threads(default_threads)  # each starts from torch's threads, as a user's script
            seed = args.seed + repeat
            torch.manual_seed(seed)
            model = build(contender, args.arch)
            chosen = None
            if contender.startswith("segzoo"):
                forced = {"precision": "fp32"} if contender == "segzoo-fp32" else {}
                curve, chosen = segzoo_run(model, data, args, seed, **forced)
            else:
                curve = plain_loop(model, data, args, seed, tuned=contender == "smp-tuned")
            run = {"contender": contender, "repeat": repeat, "seed": seed, "curve": curve,
                   "time_to_target_s": time_to(curve, args.target), "final_dice": curve[-1][1], "chosen": chosen}
            runs.append(run)
            shown = "not reached" if run["time_to_target_s"] is None else f"{run['time_to_target_s']:.1f} s"
            log(f"{contender:10s} repeat {repeat}: Dice {args.target} {shown}, final Dice {run['final_dice']:.4f} "
                f"after {curve[-1][0]:.1f} s")
    summary = {}
    for contender in contenders:
        mine = [r for r in runs if r["contender"] == contender]
        reached = [r["time_to_target_s"] for r in mine if r["time_to_target_s"] is not None]
        summary[contender] = {
            "median_time_to_target_s": statistics.median(reached) if len(reached) == len(mine) else None,
            "median_final_dice": statistics.median(r["final_dice"] for r in mine),
            "median_epoch_s": statistics.median(r["curve"][-1][0] / len(r["curve"]) for r in mine),
            "reached": f"{len(reached)}/{len(mine)}"}
    return {"runs": runs, "summary": summary}


def plot(runs: list[dict[str, Any]], target: float) -> bytes:
    """PNG bytes of valid Dice against wall time, one line per run (a colour per contender)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(CONTENDERS + EXTRA_CONTENDERS, ("tab:green", "tab:red", "tab:blue", "tab:olive")))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        t, d = zip(*run["curve"])
        ax.plot(t, d, marker="o", ms=3, color=colours[run["contender"]], alpha=0.85,
                label=run["contender"] if run["repeat"] == 0 else None)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"Dice {target}")
    ax.set(xlabel="wall time (s)", ylabel="valid Dice", title="Time to Dice: resnet34 U-Net")
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def table(summary: dict[str, dict[str, Any]], target: float) -> str:
    """The summary as a markdown table (for BENCHMARKS.md), with the speed-ups against smp's plain and tuned loops."""
    bases = [summary.get(name, {}).get("median_time_to_target_s") for name in ("smp", "smp-tuned")]
    lines = [f"| contender | time to Dice {target} (s) | vs smp | vs smp-tuned | final Dice | s / epoch |",
             "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        t = s["median_time_to_target_s"]
        ratios = [f"{base / t:.2f}x" if t and base else "-" for base in bases]
        lines.append(f"| {name} | {'not reached' if t is None else f'{t:.1f}'} | {ratios[0]} | {ratios[1]} | "
                     f"{s['median_final_dice']:.4f} | {s['median_epoch_s']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol (or ``--quick``), print the table, write the JSON and the PNG to ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet34", help="encoder of the three U-Nets (default resnet34)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=384)
    p.add_argument("--n-valid", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10, help="the epoch budget")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--target", type=float, default=0.95, help="the valid Dice to reach")
    p.add_argument("--repeats", type=int, default=2, help="runs per contender (medians reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS + EXTRA_CONTENDERS,
                   help="who runs (default: the protocol's three; segzoo-fp32: segzoo's trainer, precision fp32)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: resnet18, 64 px, 16 + 8 images, batch 8, 1 epoch, 1 repeat")
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    p.add_argument("--force", action="store_true", help="replace time_to_dice.json / .png in --out")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.size, args.n_train, args.n_valid, args.batch_size = "resnet18", 64, 16, 8, 8
        args.epochs, args.repeats = 1, 1
    for name in ("size", "n_train", "n_valid", "batch_size", "epochs", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.size < 32 or args.size % 32:
        p.error(f"--size must be a multiple of 32 (a U-Net's input), got {args.size}")
    if not 0 < args.target <= 1:
        p.error(f"--target must be in (0, 1], got {args.target}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file, not a folder")
    taken = [out / f for f in FILES if (out / f).exists() or (out / f).is_symlink()]
    if taken and not args.force:
        p.error(f"{taken[0]} exists (an earlier run's); pass --force to replace it, or another --out")
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        p.error("segmentation_models_pytorch is not installed (pip install segmentation-models-pytorch==0.6.*)")

    from segzoo.benchmark.measure import environment
    from segzoo.fileio import write_bytes_atomic, write_json_atomic

    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if load_start and load_start[0] > 1:
        print(f"warning: load average {load_start[0]:.2f} at start: timings of a busy machine are not the "
              f"protocol's (measure on a quiet one)", file=sys.stderr)
    env = environment()
    print(f"cpu: {env['cpu']} ({env['cpu_capability']}; {' '.join(env['cpu_isa_flags'] or [])}), load at start "
          f"{load_start}")
    result = run_all(args)
    result.update(protocol={k: v for k, v in vars(args).items() if k not in ("out", "force")},
                  environment={**env, "load_average_start": load_start})
    print(table(result["summary"], args.target))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, out / FILES[0], overwrite=args.force)
    write_bytes_atomic(out / FILES[1], plot(result["runs"], args.target), overwrite=args.force)
    print(f"wrote {out / FILES[0]} and {out / FILES[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
