"""Overhead of SupervisedRunner over a bare hand-written training loop (goal: <= 3 %).

Both sides train the same model from the same weights on the same data for the same epochs:
a train loader (forward, loss, backward, step) then a valid loader (forward, loss) each epoch.
Both write the same files each epoch, as durably: the runner's default checkpoints
(``last``, the top-1 ``{stage}.{epoch}`` and ``best``, each light and ``_full``, and
``_metrics.json``) and one ``log.txt`` line. The bare loop serializes ``{model}`` and
``{model, optimizer}`` once each and writes each file the cheapest durable way (temporary
file, ``fsync``, ``os.replace``, one directory ``fsync`` per epoch); the benchmark checks that
both runs end with the same checkpoint file names. The runner runs its default callbacks and
its console log (captured), without progress bars or TensorBoard. Runs are interleaved (the
order alternates every repeat) and medians are compared, for wall-clock and for process CPU
time (steadier on a shared machine, but blind to time spent waiting on the disk).

``--bare-checkpoints one`` gives the earlier protocol instead: the bare loop writes a single
``torch.save({model, optimizer})`` per epoch without ``fsync``, so the overhead then includes
what the runner's durable multi-file checkpoint policy costs.

    python -m benchmarks.trainer_overhead                 # 64 px, small Unet, 7 repeats, 1 thread
    python -m benchmarks.trainer_overhead --repeats 11 --size 96 --out benchmarks/results

Prints the figures and writes ``trainer_overhead.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import segzoo
from segzoo.benchmark.measure import environment
from segzoo.training import SupervisedRunner


def make_loaders(n_train: int, n_valid: int, size: int, batch_size: int) -> dict[str, DataLoader]:
    """Fixed random images (N, 3, size, size) with a learnable binary mask target (N, 1, size, size)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_train + n_valid, 3, size, size, generator=g)
    y = (x.mean(1, keepdim=True) > 0.5).float()
    return {"train": DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch_size, shuffle=False),
            "valid": DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=batch_size)}


def make_model(init: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The small registry Unet (B, 3, H, W) -> (B, 1, H, W), optionally loaded with ``init``."""
    model = segzoo.create_model("unet", num_channels=8, num_blocks=3)
    if init is not None:
        model.load_state_dict(init)
    return model


def _durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temporary file, fsync, rename over ``path`` (the directory is synced later)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def bare_checkpoints(folder: Path, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     valid_loss: float, history: list[dict[str, Any]], best: list[Any]) -> None:
    """The runner's default files for one epoch, written by hand: ``last``, top-1 ``train.{epoch}``
    and ``best`` (light: weights; ``_full``: weights and optimizer), then ``_metrics.json``.

    ``best`` is ``[best_loss, best_name]`` (updated in place).
    """
    name = f"train.{epoch}"
    light = _save_bytes({"model": model.state_dict()})
    full = _save_bytes({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    improved = best[0] is None or valid_loss < best[0]
    stems = ["last"] + ([name, "best"] if improved else [])
    for stem in stems:
        _durable_write(folder / f"{stem}_full.pth", full)
        _durable_write(folder / f"{stem}.pth", light)
    history.append({"name": name, "valid_loss": valid_loss})
    _durable_write(folder / "_metrics.json", json.dumps({"epochs": history}, indent=2).encode())
    _fsync_dir(folder)
    if improved:
        if best[1] is not None:
            for suffix in (".pth", "_full.pth"):
                (folder / f"{best[1]}{suffix}").unlink()
        best[:] = [valid_loss, name]


def bare_loop(model: nn.Module, loaders: dict[str, DataLoader], epochs: int, logdir: Path,
              checkpoints: str = "same") -> float:
    """A hand-written loop; returns the final valid loss.

    ``checkpoints="same"`` writes the runner's files (:func:`bare_checkpoints`) and a ``log.txt``
    line per epoch; ``"one"`` a single ``torch.save`` per epoch, without fsync.
    """
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    folder = logdir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    best: list[Any] = [None, None]
    valid_loss = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for x, y in loaders["valid"]:
                total += float(criterion(model(x), y)) * x.shape[0]
                count += x.shape[0]
        valid_loss = total / count
        if checkpoints == "one":
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, logdir / "last.pth")
            continue
        bare_checkpoints(folder, epoch, model, optimizer, valid_loss, history, best)
        with open(logdir / "log.txt", "a") as f:
            f.write(f"[train {epoch}/{epochs}] valid: loss={valid_loss:.4g}\n")
    return valid_loss


def runner_loop(model: nn.Module, loaders: dict[str, DataLoader], epochs: int, logdir: Path) -> float:
    """The same training through SupervisedRunner; returns the final valid loss."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    with contextlib.redirect_stdout(io.StringIO()):
        state = SupervisedRunner(device="cpu").train(model, nn.BCEWithLogitsLoss(), optimizer, loaders, logdir,
                                                     num_epochs=epochs)
    return state.valid_metrics["loss"]


def _overhead(times: dict[str, list[float]]) -> dict[str, float]:
    med = {k: statistics.median(v) for k, v in times.items()}
    # paired per-repeat ratios are less sensitive to load drifting over the run
    paired = statistics.median(r / b for r, b in zip(times["runner"], times["bare"]))
    return {"median_bare_s": med["bare"], "median_runner_s": med["runner"],
            "overhead_pct": 100 * (med["runner"] / med["bare"] - 1), "paired_overhead_pct": 100 * (paired - 1)}


def checkpoint_names(logdir: Path) -> list[str]:
    """Names of the files in ``logdir/checkpoints`` (sorted)."""
    return sorted(p.name for p in (logdir / "checkpoints").iterdir())


def measure(repeats: int, epochs: int, size: int, batch_size: int, n_train: int, n_valid: int,
            bare_checkpoints: str = "same", log=print) -> dict[str, Any]:
    """Interleaved timings of both loops (wall clock and process CPU time).

    ``bare_checkpoints``: ``"same"`` (the bare loop writes the runner's files, as durably) or
    ``"one"`` (one plain ``torch.save`` per epoch); see the module docstring.

    Returns:
        ``{"wall": {...}, "cpu": {...}, "times": ..., "final_valid_loss": ..., "config": ...}`` where each
        of ``wall`` / ``cpu`` holds both medians, the overhead of the medians and the median of the
        per-repeat ratios, in percent. CPU time is steadier on a shared machine but leaves out time
        spent waiting for the disk (checkpoint fsyncs), which wall time includes.

    Raises:
        RuntimeError: with ``"same"``, the two runs did not end with the same checkpoint files.
    """
    loaders = make_loaders(n_train, n_valid, size, batch_size)
    torch.manual_seed(0)
    init = make_model().state_dict()
    wall: dict[str, list[float]] = {"bare": [], "runner": []}
    cpu: dict[str, list[float]] = {"bare": [], "runner": []}
    losses: dict[str, float] = {}
    fns = {"bare": functools.partial(bare_loop, checkpoints=bare_checkpoints), "runner": runner_loop}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in fns.items():  # warm-up (allocator, first-call costs), not timed
            fn(make_model(init), loaders, 1, Path(tmp) / f"warmup_{name}")
        for r in range(repeats):
            order = ["bare", "runner"] if r % 2 == 0 else ["runner", "bare"]
            for name in order:
                model = make_model(init)
                c0, w0 = time.process_time(), time.perf_counter()
                losses[name] = fns[name](model, loaders, epochs, Path(tmp) / f"{name}_{r}")
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
            if bare_checkpoints == "same" and r == 0:
                names = {k: checkpoint_names(Path(tmp) / f"{k}_{r}") for k in fns}
                if names["bare"] != names["runner"]:
                    raise RuntimeError(f"unequal work: bare loop wrote {names['bare']}, runner {names['runner']}")
            log(f"repeat {r + 1}/{repeats}: wall bare {wall['bare'][-1]:.3f} s runner {wall['runner'][-1]:.3f} s; "
                f"cpu bare {cpu['bare'][-1]:.3f} s runner {cpu['runner'][-1]:.3f} s")
    return {"wall": _overhead(wall), "cpu": _overhead(cpu), "times": {"wall_s": wall, "cpu_s": cpu},
            "final_valid_loss": losses,
            "config": {"repeats": repeats, "epochs": epochs, "size": size, "batch_size": batch_size,
                       "bare_checkpoints": bare_checkpoints,
                       "n_train": n_train, "n_valid": n_valid, "model": "unet(num_channels=8, num_blocks=3)",
                       "threads": torch.get_num_threads()}}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats (median taken)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per timed run")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-train", type=int, default=192)
    p.add_argument("--n-valid", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: steadier timings on a shared machine; 0: torch's choice)")
    p.add_argument("--bare-checkpoints", choices=("same", "one"), default="same",
                   help="same: the bare loop writes the runner's checkpoint files, as durably (default); "
                        "one: a single torch.save per epoch (the earlier protocol)")
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    args = p.parse_args(argv)
    for name in ("repeats", "epochs", "size", "batch_size", "n_train", "n_valid"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = measure(args.repeats, args.epochs, args.size, args.batch_size, args.n_train, args.n_valid,
                     args.bare_checkpoints)
    result["environment"] = environment()  # its load_average is taken at the end
    result["environment"]["load_average_start"] = load_start
    for kind in ("wall", "cpu"):
        r = result[kind]
        verdict = "met" if max(r["overhead_pct"], r["paired_overhead_pct"]) <= 3.0 else "NOT met"
        print(f"{kind:4s}: bare loop median {r['median_bare_s']:.3f} s, SupervisedRunner median "
              f"{r['median_runner_s']:.3f} s: overhead {r['overhead_pct']:+.2f} % "
              f"(paired {r['paired_overhead_pct']:+.2f} %), goal <= 3 % {verdict}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "trainer_overhead.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
