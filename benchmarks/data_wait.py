"""How long the training steps of the example configs wait for their data (issue 23, point 4).

Trains each config for a few epochs at each ``data.num_workers`` and ``data.params.normalize`` asked for,
and reads what the runner records per epoch (``data_wait``: seconds the train loader's steps waited
for their batch, ``data_wait_share``: that over the train pass): prints, per run, the median over the
epochs after the first of the wait per step (ms), the step time (ms, wait included) and the share, and
the first epoch's share (worker start-up). ``folder.yml`` trains on a generated folder of random
8-bit images (``--folder-images`` of them at 320 x 320) unless ``--folder DIR`` (with
``train/images``, ``train/masks``, ``valid/images``, ``valid/masks``) is given.

    python -m benchmarks.data_wait                                  # demo + folder, workers 0 and auto
    python -m benchmarks.data_wait --configs demo --workers 0 1 2 --epochs 3 --out benchmarks/results

Run it on a quiet machine for figures to compare; on a busy one only the share is meaningful.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def make_folder(root: Path, count: int, size: int = 320, seed: int = 0) -> dict[str, str]:
    """Random 8-bit JPEG images and binary PNG masks under ``root``; the four ``data.*`` folder overrides."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = {}
    for split, n in (("train", count), ("valid", max(2, count // 4))):
        for part in ("images", "masks"):
            (root / split / part).mkdir(parents=True, exist_ok=True)
            paths[f"{split}_{part}"] = str(root / split / part)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / "images" / f"{i}.jpg")
            mask = (rng.integers(0, 2, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1) * 255).astype(np.uint8)
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    return paths


def run(config: str, workers: str, normalize: str, epochs: int, logdir: Path, folder: dict[str, str]) -> dict[str, Any]:
    """One training run of ``configs/{config}.yml``; its per-epoch data wait figures."""
    from segzoo.training.build import build_loaders
    from segzoo.training.config import load_config, train_from_config

    overrides = [f"logdir={logdir}", f"data.num_workers={workers}", f"data.params.normalize={normalize}",
                 "runner.verbose=false"]
    if config == "folder":
        overrides += [f"data.{k}={v}" for k, v in folder.items()]
        overrides += ["stages.0.num_epochs=1", f"stages.1.num_epochs={max(1, epochs - 1)}"]
    else:
        overrides += [f"num_epochs={epochs}"]
    cfg = load_config(CONFIGS / f"{config}.yml", overrides)
    steps = len(build_loaders(cfg["data"], cfg.get("seed", 42))[0]["train"])
    with contextlib.redirect_stdout(io.StringIO()):
        train_from_config(cfg)
    entries = json.loads((logdir / "checkpoints" / "_metrics.json").read_text())["epochs"]
    # (folder.yml: each stage's _metrics.json holds its own epochs, so these are the last stage's)
    epochs_seen = [e["metrics"]["train"] for e in entries]
    later = epochs_seen[1:] or epochs_seen
    wait = [m["data_wait"] / steps for m in later]
    step = [m["data_wait"] / max(m["data_wait_share"], 1e-12) / steps for m in later]
    return {"config": config, "num_workers": workers, "normalize": normalize, "steps": steps,
            "wait_ms": 1000 * statistics.median(wait), "step_ms": 1000 * statistics.median(step),
            "share": statistics.median(m["data_wait_share"] for m in later),
            "first_share": epochs_seen[0]["data_wait_share"]}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["demo", "folder"], choices=["demo", "multiclass", "folder"])
    parser.add_argument("--workers", nargs="+", default=["0", "auto"])
    parser.add_argument("--normalize", nargs="+", default=["auto"], choices=["auto", "batch", "item"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--folder-images", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = ({f"{s}_{p}": str(args.folder / s / p) for s in ("train", "valid") for p in ("images", "masks")}
                  if args.folder else make_folder(Path(tmp) / "data", args.folder_images) if "folder" in args.configs
                  else {})
        for config in args.configs:
            for workers in args.workers:
                for normalize in args.normalize:
                    logdir = Path(tmp) / f"{config}-{workers}-{normalize}"
                    row = run(config, workers, normalize, args.epochs, logdir, folder)
                    rows.append(row)
                    print(f"{config:10s} workers={workers:4s} normalize={normalize:5s} steps/epoch={row['steps']:3d}  "
                          f"wait {row['wait_ms']:7.1f} ms/step  step {row['step_ms']:7.1f} ms  share "
                          f"{row['share']:6.1%}  (first epoch {row['first_share']:.1%})", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data_wait.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
