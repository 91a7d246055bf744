"""ASPP's dilated depthwise convs: torch's conv (oneDNN) against ``conv_in_bounds``, per rate and memory format.

    python -m benchmarks.aspp_depthwise                      # 4 x 512 x 32 x 32 (resnet34, 256^2, stride 8)
    python -m benchmarks.aspp_depthwise --size 64 --threads 2 --rounds 20

The two run interleaved, in random order per round; the table gives the median time of each and the
median of the per-round ratios (conv / conv_in_bounds) with its quartiles. With ``--threads 1`` the
clock is the process's CPU time (steadier on a shared machine), else wall time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from segzoo.decoders.atrous import conv_in_bounds


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    v = sorted(values)
    return v[len(v) // 4], statistics.median(v), v[(3 * len(v)) // 4]


def _time_pair(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor, train: bool, rounds: int,
               clock: Callable[[], float]) -> dict[str, list[float]]:
    """Per-round ms of ``conv(x)`` and ``conv_in_bounds(conv, x)`` (with ``train``: and their input/weight gradients)."""

    def run(f: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if train:
            torch.autograd.grad(f(x), [x, conv.weight], grad)
        else:
            with torch.no_grad():
                f(x)

    fns = {"conv": conv, "in_bounds": lambda t: conv_in_bounds(conv, t)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        run(f)
    for _ in range(rounds):
        for name in random.sample(list(fns), len(fns)):
            start = clock()
            run(fns[name])
            times[name].append((clock() - start) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    """Print a markdown table: rate, memory format, pass, ms of each, ratio median [q25, q75]."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aspp_depthwise", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--size", type=int, default=32, help="feature H = W")
    parser.add_argument("--rates", type=int, nargs="+", default=[12, 24, 36])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.batch} x {args.channels} x {args.size}^2, "
          f"{'CPU' if args.threads == 1 else 'wall'} time")
    print("| rate | format | pass | conv ms | conv_in_bounds ms | speed-up (median [q25, q75]) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rate in args.rates:
        conv = nn.Conv2d(args.channels, args.channels, 3, padding=rate, dilation=rate, groups=args.channels, bias=False)
        for fmt, fmt_name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels_last")):
            conv = conv.to(memory_format=fmt)
            x = torch.randn(args.batch, args.channels, args.size, args.size).contiguous(memory_format=fmt)
            grad = torch.randn_like(x)
            for train in (False, True):
                times = _time_pair(conv, x.requires_grad_(train), grad, train, args.rounds, clock)
                q25, med, q75 = _quartiles([a / b for a, b in zip(times["conv"], times["in_bounds"])])
                print(f"| {rate} | {fmt_name} | {'forward+backward' if train else 'forward'} | "
                      f"{statistics.median(times['conv']):.1f} | {statistics.median(times['in_bounds']):.1f} | "
                      f"{med:.2f}x [{q25:.2f}, {q75:.2f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
