"""Command-line arguments of every ``segzoo`` subcommand, and ``segzoo models``, without torch.

``segzoo --help``, ``segzoo CMD --help``, usage errors and ``segzoo models`` are answered from
this module alone: it imports only the standard library and :mod:`segzoo.errors`, so they take
well under a second instead of the seconds torch needs to import. The commands' ``run(args)``
functions live in their own modules (``segzoo.training.config``, ``segzoo.export``, ...) and
import torch when a command really runs.

Choices repeated here from torch-importing modules (export formats, benchmark archs and dtypes)
and the built-in model names are checked against their sources by ``tests/test_cli_startup.py``.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
from collections.abc import Callable

# ---- `segzoo models`: the built-in registry names, without importing the models -------------

#: ResNet depths with a ``resnet{depth}_{arch}`` registry entry (segzoo.models.named).
RESNET_DEPTHS = (18, 34, 50, 101, 152)
#: Architectures: each is registered as a generic model (``unet``) and per ResNet depth.
ARCHITECTURES = ("unet", "linknet", "fpn_unet", "pspnet")
#: Every built-in registry name, sorted like :func:`segzoo.list_models` (a test checks they are equal).
MODEL_NAMES = tuple(sorted([*ARCHITECTURES,
                            *(f"resnet{d}_{a}" for d, a in itertools.product(RESNET_DEPTHS, ARCHITECTURES))]))


def add_models_arguments(parser: argparse.ArgumentParser, command: str = "models") -> None:
    """Arguments of ``segzoo models``."""
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")


def list_model_names(pattern: str = "*") -> list[str]:
    """The built-in model names matching a shell-style ``pattern``, sorted (no torch import)."""
    return [n for n in MODEL_NAMES if fnmatch.fnmatch(n, pattern)]


def run_models(args: argparse.Namespace) -> int:
    """Print the built-in model names matching ``args.pattern``, one a line.

    Raises:
        NotFoundError: no name matches (the message lists close matches).
    """
    from segzoo.errors import unknown_name_error

    names = list_model_names(args.pattern)
    if not names:
        raise unknown_name_error("model pattern", args.pattern, MODEL_NAMES)
    print("\n".join(names))
    return 0


# ---- `segzoo train` --------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser, command: str = "train") -> None:
    """Arguments of ``segzoo train``."""
    parser.add_argument("--config", "-C", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (values are YAML)")


# ---- `segzoo trace` / `segzoo export` ----------------------------------------------------------

#: segzoo.export.DEFAULT_INPUT_SIZE, TRACE_MODES, FORMATS (checked equal by a test)
DEFAULT_INPUT_SIZE = (256, 256)
TRACE_MODES = ("eval", "train")
EXPORT_FORMATS = ("onnx", "torchscript", "export")

_MODEL_FACTORY_HELP = ("factory for models outside the registry (checkpoint without model_spec): a callable "
                       "returning the nn.Module, called with no arguments (or with the checkpoint's model_spec "
                       "kwargs if it has one); imported from sys.path, which for the segzoo script does not "
                       "include the current directory: run with PYTHONPATH=. for a module there")


def add_export_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Arguments of ``segzoo trace`` and ``segzoo export`` (``command`` picks which)."""
    parser.add_argument("logdir", help="trainer log directory (with checkpoints/) or a checkpoint file")
    parser.add_argument("-c", "--checkpoint", default="best", help="best | last | STAGE.EPOCH | path (default best)")
    parser.add_argument("--model", default=None, metavar="PKG.MODULE:FACTORY", help=_MODEL_FACTORY_HELP)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--input-size", nargs=2, type=int, default=list(DEFAULT_INPUT_SIZE), metavar=("H", "W"),
                        help="size of the example input (default 256 256); outputs work at other sizes")
    parser.add_argument("--batch-size", type=int, default=1, help="batch of the example input (default 1)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    if command == "trace":
        parser.description = ("Trace a checkpoint to TorchScript (torch.jit, deprecated upstream but kept for "
                              "C++ torch::jit::load users; see 'segzoo export --format export').")
        parser.add_argument("-m", "--method", default="forward", help="model method to trace (default forward)")
        parser.add_argument("--mode", choices=TRACE_MODES, default="eval", help="model mode while tracing")
        parser.add_argument("--with-grad", action="store_true", help="trace with gradients enabled")
        parser.add_argument("--out-dir", default=None, help="output folder (default LOGDIR/trace)")
        parser.add_argument("--out-model", default=None, help="output file; overrides --out-dir")
    else:
        parser.description = ("Export a checkpoint to ONNX (checked in onnxruntime; needs the 'export' extra), "
                              "TorchScript, or a torch.export program (.pt2, load with "
                              "torch.export.load(path).module()). Every file is checked against the eager model "
                              "at the example size and at another batch and H x W before it is written.")
        parser.add_argument("--format", choices=EXPORT_FORMATS, required=True,
                            help="onnx | torchscript | export (torch.export .pt2; the example batch is raised to "
                                 "at least 2 and H, W to multiples of the model's size_multiple)")
        parser.add_argument("--out", required=True, help="output file")
        parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")


# ---- `segzoo predict` ---------------------------------------------------------------------------

def add_predict_arguments(parser: argparse.ArgumentParser, command: str = "predict") -> None:
    """Arguments of ``segzoo predict``."""
    parser.add_argument("logdir", help="trainer log directory (with checkpoints/) or a checkpoint file")
    parser.add_argument("--input", required=True, help="an image or a folder of PNG/JPEG images")
    parser.add_argument("--output", required=True, help="output folder for {stem}.png masks")
    parser.add_argument("-c", "--checkpoint", default="best", help="best | last | STAGE.EPOCH | path (default best)")
    parser.add_argument("--model", default=None, metavar="PKG.MODULE:FACTORY", help=_MODEL_FACTORY_HELP)
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold of binary models")
    parser.add_argument("--overlay", action="store_true", help="also write {stem}_overlay.png")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--batch-size", type=int, default=1, help="images (or tiles) per forward pass")
    parser.add_argument("--tile", type=int, default=None, metavar="SIZE",
                        help="run overlapping SIZE x SIZE windows (default: whole images)")
    parser.add_argument("--tile-overlap", type=int, default=None, help="window overlap in pixels (default SIZE/4)")
    parser.add_argument("--force", action="store_true", help="overwrite existing masks")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# ---- `segzoo benchmark` ---------------------------------------------------------------------------

#: segzoo.benchmark.ARCHS and the keys of segzoo.benchmark.measure.DTYPES (checked equal by a test)
BENCHMARK_ARCHS = ("unet", "linknet", "fpn_unet", "pspnet")
BENCHMARK_DTYPES = ("fp32", "bf16", "fp16")


def add_benchmark_arguments(parser: argparse.ArgumentParser, command: str = "benchmark") -> None:
    """Options of ``segzoo benchmark`` (also used by ``python -m benchmarks.models``)."""
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="segzoo registry names (e.g. resnet34_unet); default: --encoders x --archs")
    parser.add_argument("--encoders", nargs="+", default=["resnet34"],
                        help="resnet18/34/50/... or timm:<name> (default: resnet34)")
    parser.add_argument("--archs", nargs="+", default=list(BENCHMARK_ARCHS), choices=list(BENCHMARK_ARCHS))
    parser.add_argument("--no-smp", action="store_true", help="do not add the smp twin of each model")
    parser.add_argument("--no-body", action="store_true", help="do not add the ResNet encoder body alone")
    parser.add_argument("--devices", nargs="+", default=["cpu"], help="cpu and/or cuda (cuda skipped if absent)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(BENCHMARK_DTYPES),
                        help="fp32, or bf16/fp16 autocast")
    parser.add_argument("--channels-last", choices=("off", "on", "both"), default="off",
                        help="convert models and inputs to channels_last")
    parser.add_argument("--compile", action="store_true", help="wrap models in torch.compile")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[4])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[256])
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per model and mode")
    parser.add_argument("--iterations", type=int, default=2, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per model and mode (median)")
    parser.add_argument("--num-classes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the train-step memory measurement")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="memory measurements per model, each in a fresh process (median)")
    parser.add_argument("--forward-only", action="store_true", help="time the forward pass only")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (json, md, png)")
    parser.add_argument("--name", default="benchmark", help="output file stem")


#: command name -> its add_arguments(parser, command); cli.py falls back to the command
#: module's own ``add_arguments`` for a command missing here
ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser, str], None]] = {
    "models": add_models_arguments,
    "train": add_train_arguments,
    "trace": add_export_arguments,
    "export": add_export_arguments,
    "predict": add_predict_arguments,
    "benchmark": add_benchmark_arguments,
}
