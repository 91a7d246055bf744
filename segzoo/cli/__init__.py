"""The ``segzoo`` command: ``segzoo models | train | tune | trace | export | predict | benchmark | serve | hardware | check-precision``.

Each subcommand's arguments are declared in :mod:`segzoo.cli.args`, which does not import
torch, so ``--help``, usage errors and ``segzoo models`` answer at once. Each command's
``run(args) -> int`` is in its own module, ``segzoo.cli.<command>`` (``args.command`` names the
subcommand, so one module may serve several: :mod:`segzoo.cli.export` runs ``trace`` and
``export``); it is imported only when the command runs and imports the library then. Errors a
user can cause are printed as one line on stderr with a non-zero exit code; ``--debug`` shows
the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

from segzoo.cli.args import ARGUMENTS

__all__ = ["COMMANDS", "USER_ERRORS", "OneLineErrorParser", "build_parser", "main"]

# command name -> (module whose run(args) implements it; one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("segzoo.cli.models", "list the registered models (--parts: encoders, decoders, ...)"),
    "train": ("segzoo.cli.train", "train a model from a YAML config"),
    "tune": ("segzoo.cli.tune", "search config values with an Optuna study (one training run per trial)"),
    "trace": ("segzoo.cli.export", "trace a checkpoint to TorchScript"),
    "export": ("segzoo.cli.export", "export a checkpoint to ONNX, TorchScript or torch.export (.pt2)"),
    "predict": ("segzoo.cli.predict", "predict masks for images with a trained model"),
    "benchmark": ("segzoo.cli.benchmark", "measure speed and memory of models"),
    "serve": ("segzoo.cli.serve", "serve a model over HTTP (FastAPI + uvicorn)"),
    "hardware": ("segzoo.cli.hardware", "show (or --calibrate: measure and cache) this machine's layout choice"),
    "check-precision": ("segzoo.cli.check_precision", "Dice of bf16 and int8 inference against fp32 on a run's "
                                                      "valid set (read by --backend auto)"),
}

# errors a user can cause; anything else is a bug and keeps its traceback
# (FloatingPointError: a NaN/inf loss, segzoo.training.NonFiniteLossError; ImportError: an optional package
# missing, named with the extra that installs it)
USER_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError, FloatingPointError, ImportError)
MAX_MESSAGE = 1000  # characters of an error line: a message quoting a huge value stays readable


def _runner(command: str):
    """The ``run(args)`` function of ``command`` (imports its module; it imports torch when it runs)."""
    return importlib.import_module(COMMANDS[command][0]).run


def plain(text: str) -> str:
    """``text`` without reST markup (``double backticks``, roles such as :func:`x`), as ``--help`` shows it."""
    return re.sub(r":[a-z]+:`~?([^`]*)`", r"\1", text).replace("``", "")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2), without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the argument parser; only the chosen subcommand's arguments are added (no torch import)."""
    parser = OneLineErrorParser(prog="segzoo", description=plain(__doc__.splitlines()[0]))
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=plain(help_text), description=plain(help_text))
        if name == chosen:
            ARGUMENTS[name](p, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segzoo`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(_runner(args.command)(args) or 0)
    except KeyboardInterrupt:
        print("segzoo: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        line = message.splitlines()[0] if message.strip() else type(exc).__name__
        line = line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE - 3] + "..."
        print(f"segzoo {args.command}: error: {line}", file=sys.stderr)
        return 2
