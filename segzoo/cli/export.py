"""``segzoo trace LOGDIR`` and ``segzoo export LOGDIR --format ... --out PATH``.

Arguments: :func:`segzoo.cli.args.add_export_arguments`; the work: :mod:`segzoo.export`.
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Run ``segzoo trace`` or ``segzoo export`` (``args.command``); prints the written path."""
    from segzoo.export import export_checkpoint, trace_checkpoint

    common = dict(checkpoint=args.checkpoint, device=args.device, input_size=tuple(args.input_size),
                  batch_size=args.batch_size, model_factory=args.model, force=args.force)
    if args.command == "trace":
        path = trace_checkpoint(args.logdir, method=args.method, mode=args.mode, requires_grad=args.with_grad,
                                out_dir=args.out_dir, out_model=args.out_model, **common)
    else:
        path = export_checkpoint(args.logdir, args.format, args.out, opset=args.opset, **common)
    print(path)
    return 0
