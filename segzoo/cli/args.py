"""Command-line arguments of every ``segzoo`` subcommand, without torch.

``segzoo --help``, ``segzoo CMD --help``, usage errors and ``segzoo models`` are answered from
this module alone: it imports only the standard library, so they take well under a second
instead of the seconds torch needs to import. Each command's ``run(args)`` is in its own module
(:mod:`segzoo.cli.train`, :mod:`segzoo.cli.export`, ...) and imports the library, and torch,
only when the command really runs.

Choices and limits repeated here from torch-importing modules (export formats, inference
backends, predict limits, benchmark dtypes) and the part names are checked against their sources by
``tests/test_cli_startup.py``. The architectures and model names come from the torch-free table
:mod:`segzoo.architectures`, which the registry reads too.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from segzoo import architectures as _table

# ---- `segzoo models`: the built-in registry names, without importing the models -------------

#: ResNet depths with a ``resnet{depth}_{arch}`` registry entry (segzoo.architectures.RESNET_ENCODERS).
RESNET_DEPTHS = tuple(int(name.removeprefix("resnet")) for name in _table.RESNET_ENCODERS)
#: Architectures (the keys of segzoo.architectures.ARCHITECTURES, in its order): each is registered as a
#: generic model (``unet``) and per ResNet depth.
ARCHITECTURES = tuple(_table.ARCHITECTURES)
#: Every built-in registry name, sorted like :func:`segzoo.list_models` (a test checks they are equal).
MODEL_NAMES = tuple(_table.model_names())
#: The built-in part registries (kind -> sorted names), in the order ``segzoo models --parts``
#: prints them; equal to segzoo.encoders.ENCODERS, .bridges.BRIDGES, .decoders.DECODERS and
#: .heads.HEADS (checked by a test).
PART_NAMES: dict[str, tuple[str, ...]] = {
    "encoder": ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "mobilenetv2", "resnet", "timm", "timm_vit",
                "unet"),
    "bridge": ("unet",),
    "decoder": ("deeplabv3", "deeplabv3plus", "dpt", "fpn", "manet", "pan", "psp", "segformer", "unet", "unetplusplus",
                "upernet"),
    "head": ("fpn", "unet"),
}


def add_models_arguments(parser: argparse.ArgumentParser, command: str = "models") -> None:
    """Arguments of ``segzoo models``."""
    parser.add_argument("pattern", nargs="?", default="*",
                        help="shell-style filter, e.g. 'resnet*'; with --parts it matches a part's name or "
                             "its kind, e.g. 'decoder' (or 'decoders')")
    parser.add_argument("--parts", action="store_true",
                        help="list the part registries (encoders, bridges, decoders, heads) instead of the models")


# ---- `segzoo train` --------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser, command: str = "train") -> None:
    """Arguments of ``segzoo train``."""
    parser.add_argument("--config", "-C", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (values are YAML)")
    parser.add_argument("--force", action="store_true",
                        help="replace the previous run in logdir (only the files segzoo train wrote there)")


# ---- `segzoo tune` ----------------------------------------------------------------------------

#: segzoo.tuning.space.PRUNERS (checked equal by a test)
TUNE_PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "threshold", "none")


def add_tune_arguments(parser: argparse.ArgumentParser, command: str = "tune") -> None:
    """Arguments of ``segzoo tune``."""
    parser.add_argument("--config", "-C", required=True, help="YAML config; its logdir holds one folder per trial")
    parser.add_argument("--space", required=True,
                        help="YAML search space: dotted config keys -> {type: float|int|categorical, ...}")
    parser.add_argument("--trials", type=_at_least(int, "--trials"), required=True,
                        help="finished trials the study should have (counting earlier runs and other processes)")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL shared by every process of the study (default "
                             "sqlite:///LOGDIR/study.db; postgresql://... or mysql://... across machines)")
    parser.add_argument("--study", default=None, help="study name (default: the logdir's folder name)")
    parser.add_argument("--pruner", choices=TUNE_PRUNERS, default=None,
                        help="prune bad trials by their epoch metric (default: the space file's pruner:, else median)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of every trial's config")


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
        parser.add_argument("--out-model", default=None,
                            help="output file; with --out-dir, a plain file name in that folder")
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


# ---- `segzoo predict` / `segzoo serve` ----------------------------------------------------------

#: segzoo.inference.BACKENDS (checked equal by a test)
INFERENCE_BACKENDS = ("eager", "torchscript", "onnxruntime", "onnxruntime-int8", "torch-bf16")
#: segzoo.data.folder.IMAGE_SUFFIXES and MAX_PIXELS, segzoo.predict.MIN_TILE and MAX_BATCH_SIZE
#: (checked equal by a test)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PREDICT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
PREDICT_MIN_TILE = 32
PREDICT_MAX_BATCH_SIZE = 1024
_IMAGE_KINDS = "/".join(s.lstrip(".").upper() for s in IMAGE_SUFFIXES if s not in (".jpeg", ".tiff"))
#: default port of ``segzoo serve``
DEFAULT_PORT = 8000


def _at_least(kind: type, name: str, minimum: float = 1, maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse ``type`` parsing ``kind`` and refusing values below ``minimum`` or above ``maximum``, NaN and
    infinities (one-line usage error: ``nan`` passed every comparison, ``inf`` waited forever)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {text}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{name} must be <= {maximum}, got {text}")
        return value
    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model-loading options shared by ``segzoo predict`` and ``segzoo serve``."""
    parser.add_argument("-c", "--checkpoint", default="best", help="best | last | STAGE.EPOCH | path (default best)")
    parser.add_argument("--model", default=None, metavar="PKG.MODULE:FACTORY", help=_MODEL_FACTORY_HELP)
    parser.add_argument("--backend", choices=(*INFERENCE_BACKENDS, "auto"), default=None,
                        help="eager | torchscript | onnxruntime | onnxruntime-int8 | torch-bf16 (bf16 autocast) | "
                             "auto: bf16 or int8 where 'segzoo check-precision' measured their valid Dice within "
                             "0.005 of fp32's, else eager (default: auto for checkpoints, said in one line when a "
                             "check exists; eager for .pt2, torchscript for TorchScript files, onnxruntime for .onnx)")
    parser.add_argument("--mean", type=float, nargs="+", default=None,
                        help="normalization mean per channel (overrides the stored one; needed for files without it)")
    parser.add_argument("--std", type=float, nargs="+", default=None, help="normalization std per channel")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--calibration", default=None, metavar="FOLDER",
                        help="images to calibrate --backend onnxruntime-int8 on")
    parser.add_argument("--calibration-count", type=int, default=None,
                        help="how many calibration images to use (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu; torch backends)")


def add_predict_arguments(parser: argparse.ArgumentParser, command: str = "predict") -> None:
    """Arguments of ``segzoo predict``."""
    parser.add_argument("logdir", help="trainer log directory (with checkpoints/), a checkpoint, or a TorchScript, "
                                       ".pt2 or .onnx file")
    parser.add_argument("--input", required=True, help=f"an image or a folder of {_IMAGE_KINDS} images (never written)")
    parser.add_argument("--output", required=True, help="output folder for {stem}.png masks")
    add_model_arguments(parser)
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold of binary models")
    parser.add_argument("--overlay", action="store_true", help="also write {stem}_overlay.png")
    parser.add_argument("--batch-size", type=int, default=1,
                        help=f"images (or tiles) per forward pass, 1..{PREDICT_MAX_BATCH_SIZE}")
    parser.add_argument("--tile", type=int, default=None, metavar="SIZE",
                        help=f"run overlapping, blended windows of at most SIZE x SIZE, SIZE >= {PREDICT_MIN_TILE}; "
                             f"an image no larger than SIZE runs whole (default: whole images)")
    parser.add_argument("--tile-overlap", type=int, default=None,
                        help="least window overlap in pixels, 0..SIZE/2 (default SIZE/4)")
    parser.add_argument("--max-pixels", type=int, default=PREDICT_MAX_PIXELS,
                        help=f"refuse images with more pixels (default {PREDICT_MAX_PIXELS}, Pillow's limit)")
    parser.add_argument("--force", action="store_true", help="overwrite existing masks (never an input)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_serve_arguments(parser: argparse.ArgumentParser, command: str = "serve") -> None:
    """Arguments of ``segzoo serve`` (model loading as in ``segzoo predict``)."""
    parser.add_argument("source", help="trainer log directory, checkpoint, TorchScript, .pt2 or .onnx file")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                            "machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=_at_least(int, "port", 0, 65535), default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--max-batch", type=_at_least(int, "max batch"), default=8,
                        help="most images per forward pass (1 = no batching; default 8)")
    parser.add_argument("--max-wait-ms", type=_at_least(float, "max wait", 0), default=5.0,
                        help="how long a request waits for others to share its batch (default 5 ms)")
    parser.add_argument("--workers", type=_at_least(int, "workers"), default=1,
                        help="batches run at the same time, each in its own thread (default 1); without "
                             "--threads each gets cores / workers intra-op threads")
    parser.add_argument("--queue-size", type=_at_least(int, "queue size"), default=64,
                        help="requests in progress at most; more get 503 + Retry-After (default 64)")
    parser.add_argument("--max-bytes", type=_at_least(int, "max bytes"), default=32 * 1024 * 1024,
                        help="largest request body in bytes (default 32 MiB)")
    parser.add_argument("--max-pixels", type=_at_least(int, "max pixels"), default=25_000_000,
                        help="largest image W x H, checked before decoding (default 25 Mpixels)")
    parser.add_argument("--tile", type=int, default=None, metavar="SIZE",
                        help="run overlapping SIZE x SIZE windows instead of whole images")
    parser.add_argument("--tile-overlap", type=int, default=None, help="window overlap (default SIZE/4)")
    parser.add_argument("--read-timeout", type=_at_least(float, "read timeout", 0.001), default=30.0,
                        help="seconds a client has to send its whole body, else 408 (default 30)")
    parser.add_argument("--header-timeout", type=_at_least(float, "header timeout", 0.001), default=10.0,
                        help="seconds a client has to send a request's headers, else 408 and the connection "
                             "is closed (default 10)")
    parser.add_argument("--max-memory", type=_at_least(int, "max memory"), default=None, metavar="MIB",
                        help="memory (MiB) all requests in progress may reserve: bodies, decoded images, the "
                             "model's working memory; an image that needs more alone is 413, one that does not "
                             "fit beside the others 503 (default: half the memory available at start-up)")
    parser.add_argument("--bytes-per-pixel", type=_at_least(int, "bytes per pixel"), default=None,
                        help="the model's working memory per (padded) pixel, for --max-memory (default: measured "
                             "by one forward pass at start-up)")
    parser.add_argument("--shutdown-timeout", type=_at_least(float, "shutdown timeout", 0), default=30.0,
                        help="seconds to finish requests in flight after SIGTERM; then they are answered 503 and "
                             "a batch still running is abandoned (default 30)")
    parser.add_argument("--release-memory", action="store_true",
                        help="let glibc hand freed memory back to the kernel after each batch (its default: lower "
                             "idle memory, but every request faults its activations in again); by default the "
                             "server keeps it")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def add_check_precision_arguments(parser: argparse.ArgumentParser, command: str = "check-precision") -> None:
    """Arguments of ``segzoo check-precision``."""
    parser.add_argument("logdir", help="trainer log directory (with checkpoints/ and config.yml) or a checkpoint")
    parser.add_argument("-c", "--checkpoint", default="best", help="best | last | STAGE.EPOCH | path (default best)")
    parser.add_argument("--model", default=None, metavar="PKG.MODULE:FACTORY", help=_MODEL_FACTORY_HELP)
    parser.add_argument("--images", default=None, metavar="FOLDER",
                        help="images to measure on (default: the valid set of the run's config.yml)")
    parser.add_argument("--masks", default=None, metavar="FOLDER", help="their masks, paired by file name")
    parser.add_argument("--backends", nargs="+", default=None, choices=("torch-bf16", "onnxruntime-int8"),
                        help="reduced-precision backends to measure (default: torch-bf16, and onnxruntime-int8 "
                             "when onnxruntime is installed)")
    parser.add_argument("--calibration", default=None, metavar="FOLDER",
                        help="images to calibrate int8 on (default: 16 of the run's train images)")
    parser.add_argument("--limit", type=int, default=None, help="measure the first N valid images only")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold of binary models")
    parser.add_argument("--batch-size", type=_at_least(int, "batch size"), default=8, help="images per forward pass")
    parser.add_argument("--threads", type=_at_least(int, "threads"), default=None,
                        help="onnxruntime intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu; int8 is CPU only)")
    parser.add_argument("--force", action="store_true", help="replace a previous check's report (never another file)")


# ---- `segzoo benchmark` ---------------------------------------------------------------------------

#: segzoo.benchmark.ARCHS (every architecture of the table) and the keys of segzoo.benchmark.measure.DTYPES
#: (checked equal by a test)
BENCHMARK_ARCHS = ARCHITECTURES
BENCHMARK_DTYPES = ("fp32", "bf16", "fp16")


def add_benchmark_arguments(parser: argparse.ArgumentParser, command: str = "benchmark") -> None:
    """Options of ``segzoo benchmark`` (also used by ``python -m benchmarks.models``)."""
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="segzoo registry names (e.g. resnet34_unet); default: --encoders x --archs")
    parser.add_argument("--encoders", nargs="+", default=["resnet34"],
                        help=f"resnet{'/'.join(map(str, RESNET_DEPTHS))} or timm:<name> (default: resnet34)")
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
    parser.add_argument("--segzoo-layouts", nargs="+", default=["auto"], choices=("auto", "true", "false"),
                        help="segzoo's channels_last argument(s): auto (the default users get: the layout measured "
                             "fastest on this machine), true, false; several are timed side by side")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (json, md, png)")
    parser.add_argument("--name", default="benchmark", help="output file stem")


def add_hardware_arguments(parser: argparse.ArgumentParser, command: str = "hardware") -> None:
    """Arguments of ``segzoo hardware``."""
    parser.add_argument("--calibrate", action="store_true",
                        help="measure both layouts here and cache the choice (only if no other process is busy)")
    parser.add_argument("--size", type=int, default=128, help="input size of the timed model (default 128)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per layout (default 7)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="no further timed repeat starts after this many seconds (default 60)")


#: command name -> its add_arguments(parser, command) (every command of segzoo.cli.COMMANDS)
ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser, str], None]] = {
    "models": add_models_arguments,
    "train": add_train_arguments,
    "tune": add_tune_arguments,
    "trace": add_export_arguments,
    "export": add_export_arguments,
    "predict": add_predict_arguments,
    "benchmark": add_benchmark_arguments,
    "serve": add_serve_arguments,
    "check-precision": add_check_precision_arguments,
    "hardware": add_hardware_arguments,
}
