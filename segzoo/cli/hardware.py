"""``segzoo hardware [--calibrate]``: show (or measure and cache) this machine's layout choice.

The policy is :mod:`segzoo.hardware`, the measurement :mod:`segzoo.benchmark.calibration`;
this module imports them when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

PROG = "segzoo hardware"


def main(argv: list[str] | None = None) -> int:
    """``segzoo hardware [--calibrate]`` from a list of arguments (for scripts); returns the exit code."""
    from segzoo.cli import OneLineErrorParser
    from segzoo.cli.args import add_hardware_arguments

    parser = OneLineErrorParser(prog=PROG, description="show (or measure and cache) this machine's layout choice")
    add_hardware_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Print the machine key, calibrate when asked (``args.calibrate``), then print the layout choice."""
    from segzoo.benchmark import calibration
    from segzoo.hardware import cache_path, machine_key, preferred_layout

    print(f"machine: {machine_key()}")
    code = 0
    if args.calibrate:
        if args.size < 32 or args.repeats < 1 or not args.max_seconds > 0:
            print(f"{PROG}: error: --size must be >= 32, --repeats >= 1 and --max-seconds > 0, got {args.size}, "
                  f"{args.repeats} and {args.max_seconds}", file=sys.stderr)
            return 2
        try:
            result = calibration.calibrate(size=args.size, repeats=args.repeats, max_seconds=args.max_seconds)
        except OSError as exc:  # WriteError names the path
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except calibration.MachineBusyError as exc:  # nothing measured: the rules (or an older calibration) stay
            print(f"{PROG}: {exc}", file=sys.stderr)
            code = 1
        else:
            print(json.dumps(result["times_ms"], indent=1))
            if result["cached"]:
                print(f"cached in {cache_path()}")
            else:
                print(f"{PROG}: not cached: {result['not_cached']}; run it on an idle machine", file=sys.stderr)
                code = 1
    choice = preferred_layout("cpu")
    print(json.dumps(asdict(choice)))
    return code
