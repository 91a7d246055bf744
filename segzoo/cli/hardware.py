"""``python -m segzoo.hardware [--calibrate]``: show (or measure and cache) this machine's layout choice.

The policy is :mod:`segzoo.hardware`, the measurement :mod:`segzoo.benchmark.calibration`;
this module imports them when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def main(argv: list[str] | None = None) -> int:
    """python -m segzoo.hardware [--calibrate]: show (or measure and cache) this machine's layout choice."""
    parser = argparse.ArgumentParser(prog="python -m segzoo.hardware", description=main.__doc__)
    parser.add_argument("--calibrate", action="store_true",
                        help="measure both layouts here and cache the choice (only if no other process is busy)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="no further timed repeat starts after this many seconds (default 60)")
    args = parser.parse_args(argv)
    from segzoo.benchmark import calibration
    from segzoo.hardware import cache_path, machine_key, preferred_layout

    print(f"machine: {machine_key()}")
    code = 0
    if args.calibrate:
        if args.size < 32 or args.repeats < 1 or not args.max_seconds > 0:
            parser.error(f"--size must be >= 32, --repeats >= 1 and --max-seconds > 0, got {args.size}, "
                         f"{args.repeats} and {args.max_seconds}")
        try:
            result = calibration.calibrate(size=args.size, repeats=args.repeats, max_seconds=args.max_seconds)
        except OSError as exc:  # WriteError names the path
            print(f"python -m segzoo.hardware: error: {exc}", file=sys.stderr)
            return 2
        except calibration.MachineBusyError as exc:  # nothing measured: the rules (or an older calibration) stay
            print(f"python -m segzoo.hardware: {exc}", file=sys.stderr)
            code = 1
        else:
            print(json.dumps(result["times_ms"], indent=1))
            if result["cached"]:
                print(f"cached in {cache_path()}")
            else:
                print(f"python -m segzoo.hardware: not cached: {result['not_cached']}; run it on an idle "
                      f"machine", file=sys.stderr)
                code = 1
    choice = preferred_layout("cpu")
    print(json.dumps(asdict(choice)))
    return code
