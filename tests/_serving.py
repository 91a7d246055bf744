"""Helpers of the inference and serve tests: tiny checkpoints, images, a server in a subprocess."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from _models import tiny_model
from PIL import Image

from segzoo.checkpoint import save_checkpoint
from segzoo.models.registry import get_model_spec

ROOT = Path(__file__).resolve().parent.parent
NORM = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}

# a user's models for the server tests: a slow one (to fill the queue) and a pointwise one
SLOW_MODELS = textwrap.dedent('''
    import time
    import torch.nn as nn

    class Slow(nn.Module):
        """A 1x1 convolution that takes DELAY seconds per forward pass."""
        DELAY = 0.6

        def __init__(self, num_classes=2):
            super().__init__()
            self.conv = nn.Conv2d(3, num_classes, 1)

        def forward(self, x):
            time.sleep(self.DELAY)
            return self.conv(x)

    def slow(num_classes=2):
        return Slow(num_classes)
''')


def varied_model(name: str = "unet", num_classes: int = 3, **kwargs) -> torch.nn.Module:
    """A tiny registry model whose masks vary with the image: its classifier is centred and scaled.

    (A random tiny model predicts one class everywhere: its logits barely depend on the input.)
    """
    model = tiny_model(name, num_classes=num_classes, **kwargs)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    x = torch.stack([(torch.from_numpy(random_image(64, 64, s).copy()).permute(2, 0, 1).float() / 255
                      - torch.tensor(NORM["mean"]).view(3, 1, 1)) / torch.tensor(NORM["std"]).view(3, 1, 1)
                     for s in range(4)])
    with torch.no_grad():
        logits = model(x)
        mean, std = logits.mean((0, 2, 3)), logits.std((0, 2, 3)).clamp_min(1e-6)
        classifier.bias -= mean
        classifier.weight /= std.view(-1, *[1] * (classifier.weight.dim() - 1))
        classifier.bias /= std
    return model.eval()


def write_logdir(root: Path, name: str = "unet", num_classes: int = 3, normalization=NORM, **kwargs) -> Path:
    """A log directory with ``checkpoints/best.pth`` of a tiny registry model (see :func:`varied_model`)."""
    model = varied_model(name, num_classes=num_classes, **kwargs)
    save_checkpoint({"model_state_dict": model.state_dict(), "model_spec": get_model_spec(model),
                     "normalization": normalization, "epoch": 1, "stage": "stage1"},
                    root / "checkpoints" / "best.pth")
    return root


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (H, W, 3) uint8 (smooth: masks with several classes)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    """``array`` encoded as PNG."""
    import io

    buf = io.BytesIO()
    (Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """A PNG's pixels."""
    import io

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``segzoo serve`` in a subprocess on 127.0.0.1; ``url``, ``proc``, ``log()``, ``stop()``."""

    def __init__(self, source: Path, *args: str, tmp: Path, pythonpath: Path | None = None,
                 timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (ROOT, pythonpath) if p),
                   OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "segzoo.cli", "serve", str(source), "--port", str(self.port),
               "--threads", "1", *args]
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"segzoo serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"segzoo serve did not become ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """Everything the server printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, return the exit status (killed after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def user_model_checkpoint(tmp: Path, module: str, source: str, factory: str, normalization=None) -> tuple[Path, Path]:
    """A user's model code written to ``tmp/code/{module}.py``, built by ``{module}.{factory}()`` and saved as a
    weights-only checkpoint ``tmp/{factory}.pth`` (served with ``--model {module}:{factory}``).

    Returns (checkpoint, code folder); the module is not left importable in this process.
    """
    folder = tmp / "code"
    folder.mkdir()
    (folder / f"{module}.py").write_text(source)
    sys.path.insert(0, str(folder))
    try:
        model = getattr(importlib.import_module(module), factory)()
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module, None)
    ckpt = save_checkpoint({"model_state_dict": model.state_dict(), "model_spec": None,
                            "normalization": normalization}, tmp / f"{factory}.pth")
    return ckpt, folder


def module_server(tmp: Path, *args: str):
    """Generator for a module-scoped fixture: (server, logdir) of a tiny 3-class Unet served with ``args``;
    on teardown the server must exit 0 without a traceback."""
    logdir = write_logdir(tmp / "log")
    server = Server(logdir, *args, tmp=tmp)
    yield server, logdir
    code = server.stop()
    assert code == 0, server.log()
    assert "Traceback" not in server.log(), server.log()
