"""``segzoo serve SOURCE``: an HTTP server for a model, on FastAPI + uvicorn (``pip install 'segzoo[serve]'``).

    segzoo serve logs/run1 --port 8000 --backend onnxruntime --max-batch 8 --max-wait-ms 5
    curl -s --data-binary @image.png -H 'Content-Type: image/png' http://127.0.0.1:8000/v1/predict -o mask.png

The model is loaded with :func:`segzoo.inference.load_predictor` (the same path as ``segzoo
predict``, so both give identical masks); the app is :func:`segzoo.serve.app.create_app`.
SIGTERM (or Ctrl-C) stops accepting connections, answers the requests in flight, then exits 0.

This module imports neither torch nor FastAPI until :func:`run` is called.
"""

from __future__ import annotations

import argparse
import signal
import sys

DEFAULT_PORT = 8000
# segzoo.inference.BACKENDS, repeated here so that building the parser imports no torch (a test keeps them equal)
BACKENDS = ("eager", "torchscript", "onnxruntime", "onnxruntime-int8")


def _positive(kind: type, name: str, minimum: float = 1):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {text}")
        return value
    return parse


def add_model_arguments(parser) -> None:
    """The model-loading options shared by ``segzoo predict`` and ``segzoo serve``."""
    parser.add_argument("-c", "--checkpoint", default="best", help="best | last | STAGE.EPOCH | path (default best)")
    parser.add_argument("--model", default=None, metavar="PKG.MODULE:FACTORY",
                        help="factory for models outside the registry (checkpoint without model_spec)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="eager | torchscript | onnxruntime | onnxruntime-int8 (default: eager for "
                             "checkpoints and .pt2, torchscript for TorchScript files, onnxruntime for .onnx)")
    parser.add_argument("--mean", type=float, nargs="+", default=None,
                        help="normalization mean per channel (overrides the stored one; needed for files without it)")
    parser.add_argument("--std", type=float, nargs="+", default=None, help="normalization std per channel")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--calibration", default=None, metavar="FOLDER",
                        help="images to calibrate --backend onnxruntime-int8 on")
    parser.add_argument("--calibration-count", type=int, default=None,
                        help="how many calibration images to use (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu; torch backends)")


def add_arguments(parser: argparse.ArgumentParser, command: str = "serve") -> None:
    """Arguments of ``segzoo serve`` (model loading as in ``segzoo predict``)."""
    parser.add_argument("source", help="trainer log directory, checkpoint, TorchScript, .pt2 or .onnx file")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                            "machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=_positive(int, "port", 0), default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--max-batch", type=_positive(int, "max batch"), default=8,
                        help="most images per forward pass (1 = no batching; default 8)")
    parser.add_argument("--max-wait-ms", type=_positive(float, "max wait", 0), default=5.0,
                        help="how long a request waits for others to share its batch (default 5 ms)")
    parser.add_argument("--workers", type=_positive(int, "workers"), default=1,
                        help="batches run at the same time, each in its own thread (default 1)")
    parser.add_argument("--queue-size", type=_positive(int, "queue size"), default=64,
                        help="requests in progress at most; more get 503 + Retry-After (default 64)")
    parser.add_argument("--max-bytes", type=_positive(int, "max bytes"), default=32 * 1024 * 1024,
                        help="largest request body in bytes (default 32 MiB)")
    parser.add_argument("--max-pixels", type=_positive(int, "max pixels"), default=25_000_000,
                        help="largest image W x H, checked before decoding (default 25 Mpixels)")
    parser.add_argument("--tile", type=int, default=None, metavar="SIZE",
                        help="run overlapping SIZE x SIZE windows instead of whole images")
    parser.add_argument("--tile-overlap", type=int, default=None, help="window overlap (default SIZE/4)")
    parser.add_argument("--read-timeout", type=_positive(float, "read timeout", 0.001), default=30.0,
                        help="seconds a client has to send its whole body, else 408 (default 30)")
    parser.add_argument("--shutdown-timeout", type=_positive(float, "shutdown timeout", 0), default=30.0,
                        help="seconds to finish requests in flight after SIGTERM (default 30)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def check_address(host: str, port: int) -> None:
    """Refuse an address that cannot be listened on (port in use, unknown host) with one line.

    Raises:
        OSError: the reason, naming ``host:port``.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            reason = "the port is in use" if exc.errno == 98 else (exc.strerror or str(exc))
            raise OSError(f"cannot listen on {host}:{port}: {reason} (choose another --port)") from None


def _require_serve_packages() -> None:
    import importlib.util

    missing = [name for name, module in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                                         ("python-multipart", "python_multipart"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ModuleNotFoundError(f"segzoo serve needs {', '.join(missing)}: pip install 'segzoo[serve]'")


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve it until SIGTERM / Ctrl-C; returns 0 after a graceful stop."""
    _require_serve_packages()
    import uvicorn

    from segzoo.inference import load_predictor
    from segzoo.predict import check_model_tile, check_options, normalization_from_args
    from segzoo.serve.app import ServeSettings, create_app

    overlap = check_options(tile=args.tile, tile_overlap=args.tile_overlap, max_pixels=args.max_pixels)
    check_address(args.host, args.port)  # before the (slow) model loading
    predictor = load_predictor(args.source, args.backend, checkpoint=args.checkpoint, model_factory=args.model,
                               device=args.device, normalization=normalization_from_args(args.mean, args.std),
                               threads=args.threads, calibration=args.calibration,
                               calibration_count=args.calibration_count)
    check_model_tile(predictor, args.tile)
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                             workers=args.workers, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                             tile=args.tile, tile_overlap=overlap if args.tile else None,
                             read_timeout=args.read_timeout)
    app = create_app(predictor, settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout, access_log=args.log_level == "debug")
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it stopped on once it is done; this handler makes that a no-op,
    # so a SIGTERM after a graceful shutdown ends the process with status 0
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind (e.g. the port was taken meanwhile)
        raise OSError(f"cannot listen on {args.host}:{args.port} (see the log above)") from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        print("segzoo serve: error: the server did not start (see the log above)", file=sys.stderr)
        return 2
    return 0
