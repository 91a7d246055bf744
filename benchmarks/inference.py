"""Inference speed of every segzoo backend against smp 0.6, side by side in one process.

For each architecture (resnet34 Unet / Linknet / FPN / PSP, one class, random weights), batch
size and backend, ``iters`` calls at ``size`` x ``size`` are timed as one block; blocks of all
candidates are interleaved round by round (drift on a shared machine hits all alike) and the
median block is reported as ms per batch, img/s and p50/p99 per-call latency. Candidates:

- segzoo ``eager`` / ``torchscript`` / ``onnxruntime`` (/ ``onnxruntime-int8`` with ``--int8``),
  timed as :class:`segzoo.inference.Predictor` calls on a normalized NCHW tensor;
- smp eager in channels_last (model and input converted, ``torch.inference_mode``);
- smp exported to ONNX (TorchScript exporter, dynamic axes) on onnxruntime with the same session
  options as segzoo's (all graph optimizations, the same intra-op threads).

``--int8`` also trains each segzoo model briefly on the procedural dataset (``--train-steps``),
calibrates int8 on procedural images and reports the validation Dice of fp32 and int8.

    python -m benchmarks.inference --size 512 --batches 1 8 --iters 3 --repeats 5 --int8
    python -m benchmarks.inference --size 128 --batches 1 --iters 1 --repeats 2 --archs unet   # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segzoo.benchmark import ARCHS, build_model, environment, segzoo_spec, smp_available, smp_spec
from segzoo.data import ProceduralSegmentation
from segzoo.inference import backends as B
from segzoo.inference import from_loaded
from segzoo.loading import LoadedModel
from segzoo.losses import BCEDiceLoss
from segzoo.metrics import dice_from_sums, segmentation_sums

SEGZOO_BACKENDS = ("eager", "torchscript", "onnxruntime")


def _quiet(message: str) -> None:
    print(f"  {message}", file=sys.stderr)


def train_briefly(model: torch.nn.Module, steps: int, size: int, batch: int = 4) -> None:
    """Adam on procedural images for ``steps`` batches (so int8's Dice change means something)."""
    if steps <= 0:
        return
    data = ProceduralSegmentation(steps * batch, image_size=size, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = BCEDiceLoss()
    model.train()
    for step in range(steps):
        items = [data[step * batch + i] for i in range(batch)]
        x, y = torch.stack([it["features"] for it in items]), torch.stack([it["targets"] for it in items])
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    model.eval()


def valid_dice(predict, data: ProceduralSegmentation) -> float:
    """Dice of thresholded predictions over the whole procedural validation set."""
    sums = None
    for i in range(len(data)):
        item = data[i]
        s = segmentation_sums(predict(item["features"][None]), item["targets"][None], threshold=0.5)
        sums = s if sums is None else tuple(a + b for a, b in zip(sums, s))
    return float(dice_from_sums(*sums).mean())


def candidates(arch: str, args: argparse.Namespace, calib: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Callables (normalized NCHW -> logits) per candidate name, and the int8 accuracy report."""
    torch.manual_seed(0)
    model = build_model(segzoo_spec(arch), num_classes=1)
    notes: dict[str, Any] = {}
    if args.int8:
        train_briefly(model, args.train_steps, args.train_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fns: dict[str, Any] = {}
    for backend in SEGZOO_BACKENDS + (("onnxruntime-int8",) if args.int8 else ()):
        fresh = build_model(segzoo_spec(arch), num_classes=1)  # each backend folds / traces its own copy
        fresh.load_state_dict(state)
        predictor = from_loaded(LoadedModel(fresh.eval(), Path(f"<{arch}>"), {}), backend,
                                normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                                threads=args.threads, calibration=calib, calibration_count=args.calibration_count,
                                log=_quiet)
        fns[f"segzoo {backend}"] = predictor
    if args.int8:
        valid = ProceduralSegmentation(args.valid_count, image_size=args.train_size, seed=2)
        fp32, int8 = valid_dice(fns["segzoo onnxruntime"], valid), valid_dice(fns["segzoo onnxruntime-int8"], valid)
        notes = {"train_steps": args.train_steps, "valid_images": args.valid_count, "dice_fp32": fp32,
                 "dice_int8": int8, "dice_change": int8 - fp32,
                 "calibration": fns["segzoo onnxruntime-int8"].info.get("int8_agreement")}
    if smp_available() and not args.no_smp:
        smp_model = build_model(smp_spec(arch), num_classes=1).eval()
        cl = smp_model.to(memory_format=torch.channels_last)

        def smp_eager(x, m=cl):
            with torch.inference_mode():
                return m(x.contiguous(memory_format=torch.channels_last))
        fns["smp eager CL"] = smp_eager
        twin = build_model(smp_spec(arch), num_classes=1)  # smp's users export the NCHW model
        twin.load_state_dict(smp_model.state_dict())
        onnx_model = smp_onnx(twin.eval(), args.size, notes)
        if onnx_model is not None:
            fns["smp onnxruntime"] = B.OnnxBackend(B.ort_session(onnx_model, args.threads))
    return fns, notes


def smp_onnx(model: torch.nn.Module, size: int, notes: dict[str, Any]) -> bytes | None:
    """smp's model as ONNX with dynamic batch, H and W; smp's PSPNet (adaptive pooling) exports only
    with a fixed H x W, so it falls back to the benchmark's size (noted in ``notes``)."""
    try:
        return B.onnx_bytes(model, torch.randn(1, 3, 64, 64))
    except Exception as exc:  # torch.onnx raises SymbolicValueError (a RuntimeError) and others
        notes["smp_onnx"] = f"dynamic H/W export failed ({type(exc).__name__}); exported at {size}x{size}"
    import io
    import warnings

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 3, size, size),), buf, dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=B.ONNX_OPSET)
    except Exception as exc:  # e.g. PSPNet: adaptive pooling whose output does not divide the input
        notes["smp_onnx"] = f"cannot be exported to ONNX at {size}x{size} either: {str(exc).splitlines()[0][:120]}"
        return None
    return buf.getvalue()


def time_candidates(fns: dict[str, Any], batch: int, size: int, iters: int, repeats: int) -> dict[str, dict]:
    """Interleaved timing: per round, one block of ``iters`` calls per candidate; medians over rounds."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    blocks: dict[str, list[float]] = {k: [] for k in fns}
    calls: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn(x)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(iters):
                t = time.perf_counter()
                fn(x)
                calls[name].append(time.perf_counter() - t)
            blocks[name].append(time.perf_counter() - start)
    out = {}
    for name in fns:
        block = statistics.median(blocks[name])
        out[name] = {"ms_per_batch": 1000 * block / iters, "img_per_s": batch * iters / block,
                     "p50_ms": 1000 * float(np.percentile(calls[name], 50)),
                     "p99_ms": 1000 * float(np.percentile(calls[name], 99))}
    return out


def report(results: list[dict[str, Any]], under_load: bool) -> str:
    """Markdown: one table per batch size, plus speed-ups of the fastest segzoo backend."""
    lines = ["_Taken under load (other jobs on the machine); re-run on an idle machine._\n" if under_load else ""]
    for row in results:
        lines.append(f"### {row['arch']}, batch {row['batch']}, {row['size']}x{row['size']}\n")
        lines.append("| candidate | ms / batch | img/s | p50 ms | p99 ms |")
        lines.append("| --- | --- | --- | --- | --- |")
        for name, r in row["timings"].items():
            lines.append(f"| {name} | {r['ms_per_batch']:.1f} | {r['img_per_s']:.2f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} |")
        t = row["timings"]
        fp32 = {k: v for k, v in t.items() if k.startswith("segzoo") and "int8" not in k}
        best = min(fp32, key=lambda k: fp32[k]["ms_per_batch"])
        for ref in ("smp eager CL", "smp onnxruntime"):
            if ref in t:
                lines.append(f"\nfastest segzoo fp32 ({best}) vs {ref}: "
                             f"**{t[ref]['ms_per_batch'] / t[best]['ms_per_batch']:.2f}x**")
        if (row.get("int8") or {}).get("smp_onnx"):
            lines.append(f"\nsmp ONNX: {row['int8']['smp_onnx']}")
        if (row.get("int8") or {}).get("dice_fp32") is not None:
            q = row["int8"]
            lines.append(f"\nint8 (after {q['train_steps']} training steps): valid Dice fp32 {q['dice_fp32']:.4f}, "
                         f"int8 {q['dice_int8']:.4f}, change {q['dice_change']:+.4f}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--int8", action="store_true", help="also onnxruntime-int8 with its Dice change")
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--train-size", type=int, default=128)
    p.add_argument("--valid-count", type=int, default=32)
    p.add_argument("--calibration-count", type=int, default=16)
    p.add_argument("--no-smp", action="store_true")
    p.add_argument("--under-load", action="store_true", help="label the figures as taken on a busy machine")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="inference")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = args.threads or torch.get_num_threads()
    results = []
    with tempfile.TemporaryDirectory(prefix="segzoo-calib-") as tmp:
        calib = None
        if args.int8:
            calib = Path(tmp)
            data = ProceduralSegmentation(args.calibration_count, image_size=args.train_size, seed=3)
            for i in range(args.calibration_count):
                Image.fromarray(data.sample(i)[0]).save(calib / f"{i:03d}.png")
        for arch in args.archs:
            print(f"{arch}: building candidates", file=sys.stderr)
            fns, notes = candidates(arch, args, calib)
            for batch in args.batches:
                timings = time_candidates(fns, batch, args.size, args.iters, args.repeats)
                results.append({"arch": arch, "batch": batch, "size": args.size, "timings": timings,
                                "int8": notes})
                print(json.dumps(results[-1]["timings"], indent=None), file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    (out / f"{args.name}.json").write_text(json.dumps({"env": env, "args": vars(args), "results": results},
                                                      indent=2, default=str))
    text = report(results, args.under_load)
    (out / f"{args.name}.md").write_text(f"# segzoo inference backends vs smp\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
