"""``segzoo serve SOURCE``: load a model and serve it over HTTP until SIGTERM / Ctrl-C.

Arguments: :func:`segzoo.cli.args.add_serve_arguments`; the app: :mod:`segzoo.serve`. Neither
torch nor FastAPI is imported until :func:`run` is called.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from segzoo.errors import SegzooError, install_hint


class MissingExtraError(SegzooError, RuntimeError):
    """A package of the ``serve`` extra is not installed (the message says how to install it)."""


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


def threads_per_worker(workers: int) -> int | None:
    """Intra-op threads of each of ``workers`` model threads when ``--threads`` is not given.

    ``None`` (torch's default, one per core) for one worker; otherwise the cores shared out,
    at least one each: every thread that runs the model gets its own pool of torch threads, so
    ``workers`` pools of one per core each would put several spinning threads on every core.
    """
    if workers <= 1:
        return None
    import torch

    return max(1, torch.get_num_threads() // workers)


def require_serve_packages() -> None:
    """Check that the ``serve`` extra's packages import.

    Raises:
        MissingExtraError: one line naming the missing packages and the extra to install.
    """
    import importlib

    missing = []
    for name, module in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python-multipart", "python_multipart")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(f"segzoo serve needs {', '.join(missing)}, which is not installed: "
                                f"{install_hint('serve')}")


def _exit_now(code: int) -> None:
    """End the process at once (a model thread still running an abandoned batch is not waited for)."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve it until SIGTERM / Ctrl-C; returns 0 after a graceful stop."""
    require_serve_packages()
    import uvicorn

    from segzoo.cli.predict import normalization_from_args
    from segzoo.inference import load_predictor
    from segzoo.predict import check_model_tile, check_options
    from segzoo.serve.app import ServeSettings, create_app
    from segzoo.serve.budget import MIB
    from segzoo.serve.memory import keep_freed_memory
    from segzoo.serve.protocol import MAX_HEADER_BYTES, protocol_class

    overlap = check_options(tile=args.tile, tile_overlap=args.tile_overlap, max_pixels=args.max_pixels)
    check_address(args.host, args.port)  # before the (slow) model loading
    keep_memory = not args.release_memory and keep_freed_memory()
    threads = args.threads if args.threads is not None else threads_per_worker(args.workers)
    predictor = load_predictor(args.source, args.backend, checkpoint=args.checkpoint, model_factory=args.model,
                               device=args.device, normalization=normalization_from_args(args.mean, args.std),
                               threads=threads, calibration=args.calibration,
                               calibration_count=args.calibration_count)
    check_model_tile(predictor, args.tile)
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                             workers=args.workers, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                             tile=args.tile, tile_overlap=overlap if args.tile else None,
                             read_timeout=args.read_timeout, header_timeout=args.header_timeout,
                             shutdown_timeout=args.shutdown_timeout, threads=threads, keep_memory=keep_memory,
                             max_memory=None if args.max_memory is None else args.max_memory * MIB,
                             bytes_per_pixel=args.bytes_per_pixel)
    app = create_app(predictor, settings)
    settings = app.state.settings
    print(f"segzoo serve: memory budget {settings.max_memory / MIB:.0f} MiB (--max-memory), model working memory "
          f"{settings.bytes_per_pixel} bytes per pixel (--bytes-per-pixel)", file=sys.stderr)
    batcher = app.state.batcher
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout, access_log=args.log_level == "debug",
                            http=protocol_class(args.header_timeout), timeout_keep_alive=5,
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            # answer (503) the requests still waiting just before uvicorn stops waiting for them
            import asyncio

            asyncio.get_running_loop().call_later(max(0.0, args.shutdown_timeout - 0.3), batcher.abandon)
            await super().shutdown(sockets)

    server = Server(config)
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
    if batcher.running:
        print(f"segzoo serve: stopped after --shutdown-timeout {args.shutdown_timeout:g} s without waiting for "
              f"the batch still running", file=sys.stderr)
        _exit_now(0)
    return 0
