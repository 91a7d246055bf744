"""``segzoo tune --config CFG --space SPACE.yml --trials N [--storage URL] [--study NAME] [--pruner P] [overrides]``
(arguments: :func:`segzoo.cli.args.add_tune_arguments`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    """Run or continue the study, then print and write its table of trials and pictures; 0 on success.

    A bad config or space file is one line and exit 2 before any trial; Ctrl-C marks the running
    trial FAIL ("interrupted"), writes the summary of what ran and exits 130.
    """
    try:
        import optuna
    except ImportError:
        from segzoo.errors import install_hint

        print(f"segzoo tune: error: needs optuna: {install_hint('tune')}", file=sys.stderr)
        return 2
    from segzoo.training.config import load_config
    from segzoo.tuning import read_space, run_study
    from segzoo.tuning.report import write_report

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # segzoo prints one line per trial itself
    space = read_space(args.space)
    logdir = Path(load_config(args.config, args.overrides)["logdir"])
    opened = []
    try:
        study = run_study(args.config, space, args.trials, storage=args.storage, study_name=args.study,
                          pruner=args.pruner, overrides=args.overrides, on_open=opened.append)
    except KeyboardInterrupt:
        if not opened:  # stopped before the study was opened: nothing ran
            raise
        study = opened[0]
        interrupted = True
    else:
        interrupted = False
    table, written = write_report(study, logdir)
    print(table)
    print("written: " + ", ".join(str(p) for p in written))
    if interrupted:
        print("segzoo tune: interrupted: the running trial is marked FAIL; run the same command again to "
              "continue the study", file=sys.stderr)
        return 130
    return 0
