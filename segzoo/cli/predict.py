"""``segzoo predict LOGDIR --input IMAGES --output MASKS``.

Arguments: :func:`segzoo.cli.args.add_predict_arguments`; the work: :mod:`segzoo.predict`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def normalization_from_args(mean: Sequence[float] | None, std: Sequence[float] | None) -> dict | None:
    """``{"mean", "std"}`` from ``--mean``/``--std`` (both or neither), or ``None``.

    Raises:
        ValueError: only one of them given.
    """
    if (mean is None) != (std is None):
        raise ValueError("give --mean and --std together (one value per input channel each)")
    return None if mean is None else {"mean": list(mean), "std": list(std)}


def run(args: argparse.Namespace) -> int:
    """Run ``segzoo predict``; prints how many masks were written and where, and what was not read."""
    from segzoo.predict import IMAGE_SUFFIXES, join_names, predict_checkpoint, scan_input

    images, other = scan_input(args.input)
    paths = predict_checkpoint(args.logdir, images, args.output, checkpoint=args.checkpoint,
                               model_factory=args.model, device=args.device, backend=args.backend,
                               normalization=normalization_from_args(args.mean, args.std), threads=args.threads,
                               calibration=args.calibration, calibration_count=args.calibration_count,
                               threshold=args.threshold,
                               with_overlay=args.overlay, batch_size=args.batch_size, tile=args.tile,
                               tile_overlap=args.tile_overlap, force=args.force, progress=not args.no_progress,
                               max_pixels=args.max_pixels)
    print(f"wrote {len(paths)} mask(s) to {args.output}")
    if other:
        print(f"not read: {len(other)} entr{'y' if len(other) == 1 else 'ies'} of {args.input} not named "
              f"*{'/*'.join(IMAGE_SUFFIXES)}: {join_names(other)}")
    return 0
