"""``segzoo train --config CONFIG [key.sub=value ...]`` (arguments: :func:`segzoo.cli.args.add_train_arguments`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    """Train from the config; prints per-epoch Dice/IoU; returns 0 on success."""
    from segzoo.training.config import load_config, train_from_config

    cfg = load_config(args.config, args.overrides)
    state = train_from_config(cfg, force=args.force, config_path=args.config)
    best = state.best_valid_metric
    print(f"done: best valid {state.main_metric}={best:.4f}; checkpoints in {Path(cfg['logdir']) / 'checkpoints'}")
    return 0
