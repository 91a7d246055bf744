"""``segzoo check-precision LOGDIR``: Dice of bf16 and int8 inference against float32 on the run's valid set.

Arguments: :func:`segzoo.cli.args.add_check_precision_arguments`; the work: :mod:`segzoo.inference.precision_check`
and :mod:`segzoo.inference.precision_report`. The valid set is the run's (``LOGDIR/config.yml``: the
procedural dataset or the valid folders), or ``--images``/``--masks``; the report is written next to
the checkpoint (``checkpoints/best.precision.json``) and read by ``--backend auto``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run_folder(source: str) -> Path | None:
    """The run folder of a log directory or of a checkpoint inside its ``checkpoints/`` (``None``: neither)."""
    path = Path(source)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else None


def valid_set(args: argparse.Namespace, num_classes: int):
    """The :class:`~segzoo.inference.precision_check.ValidSet` to measure on (``--images``/``--masks`` or the run's).

    Raises:
        ValueError: only one of ``--images``/``--masks``, or no valid set known (one line saying what to pass).
    """
    from segzoo.inference.precision_check import ValidSet

    if (args.images is None) != (args.masks is None):
        raise ValueError("give --images and --masks together (images and their masks, paired by file name)")
    if args.images is not None:
        return ValidSet.from_folders(args.images, args.masks, num_classes)
    folder = run_folder(args.logdir)
    config = folder / "config.yml" if folder is not None else None
    if config is None or not config.is_file():
        raise ValueError(f"{args.logdir} records no valid set (no config.yml: a run trained from Python?); "
                         f"pass --images FOLDER --masks FOLDER")
    from segzoo.training.yaml_io import read_yaml_file

    cfg = read_yaml_file(config)
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{config} has no data section; pass --images FOLDER --masks FOLDER")
    seed = cfg.get("seed", 42)
    try:
        return ValidSet.from_config(data, seed if isinstance(seed, int) else 42, num_classes)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"the valid set of {config} cannot be read ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
                         f"pass --images FOLDER --masks FOLDER") from None


def run(args: argparse.Namespace) -> int:
    """Run ``segzoo check-precision``: measure, print one line per backend, write the report."""
    from segzoo.checkpoint import resolve_checkpoint
    from segzoo.device import resolve_device
    from segzoo.inference.precision_check import check_precision
    from segzoo.inference.precision_report import check_writable, summary_lines, write_report
    from segzoo.loading import load_model_info
    from segzoo.predict import check_options

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    check_options(threshold=args.threshold, batch_size=args.batch_size)
    path = resolve_checkpoint(args.logdir, args.checkpoint)
    check_writable(path, args.force)  # before the measurement: never lose it to an existing file
    loaded = load_model_info(path, model_factory=args.model, map_location=resolve_device(args.device))
    valid = valid_set(args, int(getattr(loaded.model, "num_classes", None) or 1))
    report = check_precision(loaded, valid, args.backends, threshold=args.threshold, batch_size=args.batch_size,
                             limit=args.limit, calibration=args.calibration, threads=args.threads)
    written = write_report(report, path, force=args.force)
    for line in summary_lines(report):
        print(line)
    print(f"wrote {written} (read by --backend auto of segzoo predict and serve)")
    return 0
