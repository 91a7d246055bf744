"""Fixed-budget quality comparison: segzoo vs smp on the procedural dataset, same everything.

Every model of a run sees the same pre-generated training batches in the same order, the
same seed for its initial weights, the same optimizer (Adam), loss (0.5 BCE + 0.5 Dice) and
number of steps; the score is the Dice of the thresholded predictions over the whole
validation set (summed over images, then divided).

    python -m benchmarks.quality --encoders resnet34 --steps 150 --out benchmarks/results
    python -m benchmarks.quality --archs unet --variant 's4={"decoder_params": {"min_stride": 4}}'
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from segzoo.benchmark import ARCHS, build_model, environment, segzoo_spec, smp_available, smp_spec, spec_label
from segzoo.data import ProceduralSegmentation
from segzoo.losses import BCEDiceLoss
from segzoo.metrics import dice_from_sums, segmentation_sums


def make_data(num: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a procedural dataset as tensors: images (N, 3, H, W), masks (N, 1, H, W)."""
    ds = ProceduralSegmentation(num, image_size=size, seed=seed)
    items = [ds[i] for i in range(num)]
    return torch.stack([it["features"] for it in items]), torch.stack([it["targets"] for it in items])


def train_and_score(spec: dict[str, Any], train: tuple[torch.Tensor, torch.Tensor],
                    valid: tuple[torch.Tensor, torch.Tensor], steps: int, batch_size: int, lr: float,
                    seed: int) -> dict[str, Any]:
    """Train ``spec``'s model for ``steps`` batches and return its valid Dice and timing."""
    torch.manual_seed(seed)
    model = build_model(spec, num_classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = BCEDiceLoss()
    order = torch.Generator().manual_seed(seed)
    x, y = train
    perm = torch.randperm(len(x), generator=order)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        if (step + 1) * batch_size > len(perm) * ((step * batch_size) // len(perm) + 1):
            perm = torch.randperm(len(x), generator=order)
        idx = torch.arange(step * batch_size, (step + 1) * batch_size) % len(x)
        batch = perm[idx]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[batch]), y[batch])
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    sums = None
    with torch.no_grad():
        for i in range(0, len(valid[0]), batch_size):
            s = segmentation_sums(model(valid[0][i:i + batch_size]), valid[1][i:i + batch_size], threshold=0.5)
            sums = s if sums is None else tuple(a + b for a, b in zip(sums, s))
    return {"label": spec_label(spec), "spec": spec, "valid_dice": float(dice_from_sums(*sums).mean()),
            "final_loss": float(loss.detach()), "train_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; writes ``quality.json`` and ``quality.md`` to ``--out``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["resnet34"])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--variant", action="append", default=[], metavar='NAME=JSON',
                   help="extra segzoo model per architecture with these constructor kwargs")
    p.add_argument("--no-smp", action="store_true")
    p.add_argument("--no-default", action="store_true", help="train only the --variant models of segzoo (and smp's)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train-samples", type=int, default=96)
    p.add_argument("--valid-samples", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="quality")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {}
    if args.no_default and not args.variant:
        p.error("--no-default needs at least one --variant")
    for v in args.variant:
        name, sep, text = v.partition("=")
        if not sep:
            p.error(f"--variant must look like NAME=JSON, got {v!r}")
        variants[name] = json.loads(text)
    train = make_data(args.train_samples, args.image_size, seed=args.seed)
    valid = make_data(args.valid_samples, args.image_size, seed=args.seed + 1000)
    with_smp = not args.no_smp and smp_available()
    rows = []
    for enc in args.encoders:
        for arch in args.archs:
            specs = [] if args.no_default else [segzoo_spec(arch, enc)]
            specs += [{**segzoo_spec(arch, enc, **kw), "variant": name} for name, kw in variants.items()]
            if with_smp:  # smp's ViTs take other sizes than their pretraining one only with dynamic_img_size
                specs.append(smp_spec(arch, enc, **({"dynamic_img_size": True} if "vit" in enc else {})))
            for spec in specs:
                row = train_and_score(spec, train, valid, args.steps, args.batch_size, args.lr, args.seed)
                row["pair"], row["variant"] = spec["pair"], spec.get("variant")
                print(f"{row['label']:<34} {row['variant'] or '':<10} dice {row['valid_dice']:.4f} "
                      f"loss {row['final_loss']:.4f} ({row['train_seconds']:.0f} s)", flush=True)
                rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.quality " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "name")}
    (out / f"{args.name}.json").write_text(json.dumps({"environment": environment(), "command": command,
                                                       "settings": settings, "results": rows}, indent=1) + "\n")
    lines = [f"Command: `{command}`", "", "| model | variant | valid Dice | final loss | train s |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['label']} | {r['variant'] or 'default'} | {r['valid_dice']:.4f} | {r['final_loss']:.4f} "
              f"| {r['train_seconds']:.0f} |" for r in rows]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
