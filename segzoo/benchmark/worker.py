"""``python -m segzoo.benchmark.worker SPEC_JSON``: one model's train-step memory, measured in a fresh process.

Used by :func:`segzoo.benchmark.run_benchmark` (through :mod:`segzoo.benchmark.measure`): the payload is
``{"spec": ..., "config": ...}`` as JSON, the result one JSON line on stdout. The benchmark command
itself is ``segzoo benchmark`` (:mod:`segzoo.cli.benchmark`).
"""

from __future__ import annotations

import json
import sys

from segzoo.benchmark.measure import BenchConfig, train_step_memory


def main(argv: list[str] | None = None) -> int:
    """Measure the payload ``argv[0]`` describes and print the result as one JSON line; returns 0."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("python -m segzoo.benchmark.worker: error: expects one JSON payload (internal to segzoo benchmark)",
              file=sys.stderr)
        return 2
    payload = json.loads(argv[0])
    print(json.dumps(train_step_memory(payload["spec"], BenchConfig(**payload["config"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
