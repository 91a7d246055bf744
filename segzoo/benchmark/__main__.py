"""``python -m segzoo.benchmark``: the benchmark command, or (internal) a memory worker.

``--memory-worker JSON`` measures one model's train-step memory in this fresh process and
prints the result as one JSON line (used by :func:`segzoo.benchmark.run_benchmark`).
"""

from __future__ import annotations

import argparse
import json
import sys

from segzoo.benchmark.measure import BenchConfig, train_step_memory
from segzoo.cli.args import add_benchmark_arguments
from segzoo.cli.benchmark import run


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--memory-worker"]:
        payload = json.loads(argv[1])
        print(json.dumps(train_step_memory(payload["spec"], BenchConfig(**payload["config"]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m segzoo.benchmark")
    add_benchmark_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
