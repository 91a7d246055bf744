"""``segzoo serve SOURCE``: an HTTP server for a model, on FastAPI + uvicorn (the ``serve`` extra).

    segzoo serve logs/run1 --port 8000 --backend onnxruntime --max-batch 8 --max-wait-ms 5
    curl -s --data-binary @image.png -H 'Content-Type: image/png' http://127.0.0.1:8000/v1/predict -o mask.png

The model is loaded with :func:`segzoo.inference.load_predictor` (the same path as ``segzoo
predict``, so both give identical masks); the app is :func:`segzoo.serve.app.create_app`, its
batching :mod:`segzoo.serve.batching`, its memory budget :mod:`segzoo.serve.budget`, the reading
of requests :mod:`segzoo.serve.requests`, the HTTP connections :mod:`segzoo.serve.protocol`, the
command :mod:`segzoo.cli.serve`. SIGTERM (or Ctrl-C) stops accepting connections, answers the
requests in flight for up to ``--shutdown-timeout`` seconds (then 503), then exits 0.

This module imports neither torch nor FastAPI.
"""

from __future__ import annotations

#: the backends of :data:`segzoo.inference.BACKENDS`, here without importing torch (the command line
#: repeats them in segzoo.cli.args; tests/test_cli_startup.py keeps the three equal)
BACKENDS = ("eager", "torchscript", "onnxruntime", "onnxruntime-int8", "torch-bf16")
#: the port ``segzoo serve`` listens on unless ``--port`` says otherwise
DEFAULT_PORT = 8000

__all__ = ["BACKENDS", "DEFAULT_PORT"]
