"""Per-operator profile of the train step (or forward) of segzoo models and their smp twins.

Shares are what this script is for: where a step spends its time, forward and backward, per
operator. Absolute times move with the machine's load; compare shares, or times taken in one run.

    python -m benchmarks.profile_step --archs unet --layouts internal-cl internal-nchw user-cl --top 8

Layouts:
    ``internal-cl``: segzoo's model built with ``channels_last=True`` (runs channels_last inside), NCHW input;
    ``internal-nchw``: segzoo with ``channels_last=False``, NCHW input;
    ``default``: segzoo with its default ``channels_last`` (the per-machine choice);
    ``user-cl``: both libraries' models and inputs converted to channels_last by the caller.
smp is profiled NCHW (``internal-*``/``default``) or converted (``user-cl``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.models import SPEEDUP_TARGETS
from segzoo.benchmark.measure import environment
from segzoo.benchmark.specs import ARCHS, build_model, segzoo_spec, smp_available, smp_spec

LAYOUTS = ("default", "internal-cl", "internal-nchw", "user-cl")


def _model(lib: str, arch: str, encoder: str, layout: str) -> torch.nn.Module:
    if lib == "smp":
        model = build_model(smp_spec(arch, encoder))
    else:
        kwargs: dict[str, Any] = {}
        if layout == "internal-cl":
            kwargs["channels_last"] = True
        elif layout == "internal-nchw":
            kwargs["channels_last"] = False
        model = build_model(segzoo_spec(arch, encoder, **kwargs))
    if layout == "user-cl":
        model = model.to(memory_format=torch.channels_last)
    return model


def profile_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3,
                 warmup: int = 2, train: bool = True, by_shape: bool = False) -> list[dict[str, Any]]:
    """Per-operator self CPU time (ms per step) of ``steps`` train steps (or forwards) of ``model``.

    Shapes: ``x`` (B, 3, H, W), ``y`` (B, K, H, W) targets in {0, 1}.

    Returns:
        one dict per operator, largest self time first: ``name``, ``self_ms`` (per step), ``calls``
        (per step), ``share`` (of the summed self time).
    """
    from torch.profiler import ProfilerActivity, profile

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        if train:
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            loss.backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(x)

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape) as prof:
        for _ in range(steps):
            step()
    rows = [e for e in prof.key_averages(group_by_input_shape=by_shape) if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in rows)
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"name": e.key + (f" {e.input_shapes}" if by_shape else ""), "self_ms": e.self_cpu_time_total / 1000 / steps, "calls": e.count / steps,
             "share": e.self_cpu_time_total / total} for e in rows]


def main(argv: list[str] | None = None) -> int:
    """Profile and print the top operators per model and layout; optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(SPEEDUP_TARGETS), choices=ARCHS,
                        help="architectures of segzoo.architectures (default: those with a speed target in "
                             "benchmarks/models.py)")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--layouts", nargs="+", default=["default", "user-cl"], choices=LAYOUTS)
    parser.add_argument("--libraries", nargs="+", default=["segzoo", "smp"], choices=("segzoo", "smp"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--by-shape", action="store_true", help="one row per operator and input shapes")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="write every row to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    libs = [lib for lib in args.libraries if lib != "smp" or smp_available()]
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    y = (torch.rand(args.batch_size, 1, args.resolution, args.resolution) > 0.5).float()
    env = environment()
    env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    print(f"# {env['cpu']} ({env['cpu_capability']}), torch {env['torch']}, {env['torch_threads']} threads, "
          f"load {env['load_average']}")
    out: list[dict[str, Any]] = []
    for arch in args.archs:
        for layout in args.layouts:
            for lib in libs:
                if lib == "smp" and layout in ("internal-nchw",) and "default" in args.layouts:
                    continue  # smp is NCHW in both: profiled once
                torch.manual_seed(0)
                model = _model(lib, arch, args.encoder, layout)
                fmt = torch.channels_last if layout == "user-cl" else torch.contiguous_format
                rows = profile_step(model, x.contiguous(memory_format=fmt), y, args.steps,
                                    train=not args.forward_only, by_shape=args.by_shape)
                total = sum(r["self_ms"] for r in rows)
                print(f"\n## {lib} {arch} {layout}: {total:.0f} ms/step (profiled)")
                for r in rows[:args.top]:
                    print(f"  {r['name'][:110]:<44} {r['self_ms']:8.1f} ms {100 * r['share']:5.1f}%  x{r['calls']:.0f}")
                out.append({"library": lib, "arch": arch, "layout": layout, "total_ms": total, "ops": rows})
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "profiles": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
