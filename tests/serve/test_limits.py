"""segzoo serve's limits over real HTTP on 127.0.0.1 (issue 19, points 3, 4, 5 and 10).

Bad items in a batch, memory budget and peak RSS, padded sizes, JSON bodies of every status,
file names in /v1/model, header and body deadlines, image formats, --shutdown-timeout, a
missing extra. Every request loop here is bounded in count and time.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from _serving import (
    ROOT,
    Server,
    decode_png,
    module_server,
    png_bytes,
    random_image,
    user_model_checkpoint,
    write_logdir,
)
from PIL import Image

pytestmark = pytest.mark.slow  # each test talks to a `segzoo serve` subprocess

# a user's model: fails on images 40 pixels wide, sleeps 8 s on images 24 pixels wide
FRAGILE_MODELS = textwrap.dedent('''
    import time
    import torch.nn as nn

    class Fragile(nn.Module):
        def __init__(self, num_classes=2):
            super().__init__()
            self.conv = nn.Conv2d(3, num_classes, 1)

        def forward(self, x):
            if x.shape[-1] == 40:
                raise RuntimeError("fragile: cannot take width 40")
            if x.shape[-1] == 24:
                time.sleep(8)
            return self.conv(x)

    def fragile(num_classes=2):
        return Fragile(num_classes)
''')


def _post(url: str, data: bytes, content_type: str = "image/png", **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/predict", content=data, headers={"Content-Type": content_type}, timeout=60, **kwargs)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _recv_all(sock: socket.socket, limit: float) -> bytes:
    sock.settimeout(limit)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A tiny Unet served with a queue of 2, short deadlines and a small pixel limit."""
    yield from module_server(tmp_path_factory.mktemp("guarded"), "--queue-size", "2", "--read-timeout", "3",
                             "--header-timeout", "1", "--max-pixels", "100000", "--max-batch", "4",
                             "--max-wait-ms", "20")


def test_every_error_status_has_the_json_error_body(guarded):
    server, _ = guarded
    missing = httpx.get(server.url + "/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = httpx.get(server.url + "/v1/predict")
    assert wrong.status_code == 405 and set(wrong.json()) == {"error"} and wrong.headers["allow"] == "POST"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = _recv_all(sock, 5)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert "malformed HTTP request" in json.loads(body)["error"]


def test_the_model_description_shows_no_server_path(guarded):
    server, logdir = guarded
    text = httpx.get(server.url + "/v1/model").text
    info = json.loads(text)
    assert info["source"] == "best.pth"
    assert str(logdir) not in text and str(logdir.parent) not in text


def test_headers_that_never_end_are_answered_408_and_closed(guarded):
    server, _ = guarded
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        reply = _recv_all(sock, 8)
    took = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert "--header-timeout" in json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
    assert took < 5, took


def test_slow_uploads_hold_no_queue_place(guarded):
    """Trickling bodies used to hold every place of the queue for the whole read timeout (everyone else: 503)."""
    server, _ = guarded
    socks = []
    try:
        for _ in range(4):  # twice the queue
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 5000\r\n\r\n\x89PNG")
            socks.append(sock)
        time.sleep(0.3)
        reply = _post(server.url, png_bytes(random_image(32, 32, 1)))
        assert reply.status_code == 200, reply.text
        for sock in socks:  # each stalled body gets its 408 once --read-timeout (3 s) has passed
            assert _recv_all(sock, 10).startswith(b"HTTP/1.1 408")
    finally:
        for sock in socks:
            sock.close()


def test_only_the_documented_formats_are_decoded(guarded):
    server, _ = guarded
    picture = Image.fromarray(random_image(32, 32, 4))
    for fmt in ("PNG", "JPEG", "TIFF", "BMP", "WEBP"):
        reply = _post(server.url, _encoded(picture, fmt))
        assert reply.status_code == 200 and decode_png(reply.content).shape == (32, 32), (fmt, reply.text)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n0 0 moveto 32 32 lineto stroke\nshowpage\n"
    for data, name in ((eps, "EPS"), (_encoded(picture, "GIF"), "GIF"), (_encoded(picture, "PCX"), "PCX")):
        reply = _post(server.url, data)  # the content type says PNG: the bytes decide
        assert reply.status_code == 415 and f"{name} images are not accepted" in reply.json()["error"], reply.text


def test_degenerate_aspect_ratios_are_refused_from_their_padded_size(guarded):
    server, _ = guarded
    multiple = httpx.get(server.url + "/v1/model").json()["size_multiple"]
    assert multiple > 1
    width = 100000 // multiple + 1000  # 1 x width is under --max-pixels 100000, padded it is over
    start = time.monotonic()
    reply = _post(server.url, _encoded(Image.new("RGB", (width, 1)), "PNG"))
    assert reply.status_code == 413 and "padded to" in reply.json()["error"], reply.text
    assert time.monotonic() - start < 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_memory_stays_within_the_budget(tmp_path):
    """Concurrent large images were batched whatever their size; now each reserves its memory first."""
    logdir = write_logdir(tmp_path / "log")
    server = Server(logdir, "--max-memory", "400", "--max-batch", "8", "--max-wait-ms", "300", tmp=tmp_path)
    try:
        info = httpx.get(server.url + "/v1/model").json()["serving"]
        assert info["max_memory"] == 400 * 1024 * 1024 and info["bytes_per_pixel"] > 0
        before = _status(server.proc.pid, "VmRSS")
        start = time.monotonic()
        huge = _post(server.url, _encoded(Image.new("RGB", (1600, 1600)), "PNG"))  # needs > 400 MiB alone
        assert huge.status_code == 413 and "--max-memory" in huge.json()["error"], huge.text
        assert time.monotonic() - start < 5
        data = _encoded(Image.new("RGB", (800, 800)), "PNG")  # about 340 MiB each with this model
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: _post(server.url, data), range(6)))
        codes = [r.status_code for r in replies]
        assert 200 in codes and set(codes) <= {200, 503}, codes
        busy = [r for r in replies if r.status_code == 503]
        assert all("memory budget" in r.json()["error"] and r.headers["Retry-After"] for r in busy)
        peak = _status(server.proc.pid, "VmHWM") - before
        assert peak < 550 * 1024 * 1024, f"peak RSS grew by {peak / 2**20:.0f} MiB for a budget of 400 MiB"
        assert httpx.get(server.url + "/health").json()["memory_reserved"] == 0
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    """A user's model that fails on 40-pixel-wide images and takes 8 s on 24-pixel-wide ones."""
    tmp = tmp_path_factory.mktemp("fragile")
    ckpt, folder = user_model_checkpoint(tmp, "serve_fragile_models", FRAGILE_MODELS, "fragile",
                                         {"mean": [0.5] * 3, "std": [0.25] * 3})
    server = Server(ckpt, "--model", "serve_fragile_models:fragile", "--max-batch", "8", "--max-wait-ms", "400",
                    "--shutdown-timeout", "1", "--bytes-per-pixel", "64", tmp=tmp, pythonpath=folder)
    yield server
    server.stop()


def test_a_bad_image_fails_only_its_own_request(fragile):
    server = fragile
    images = [random_image(40, 40, 0)] + [random_image(64, 64, s) for s in range(4)] + [random_image(30, 50, 9)]
    with ThreadPoolExecutor(len(images)) as pool:
        replies = list(pool.map(lambda a: _post(server.url, png_bytes(a)), images))
    assert replies[0].status_code == 500 and "cannot take width 40" in replies[0].json()["error"]
    for image, reply in zip(images[1:], replies[1:]):
        assert reply.status_code == 200, reply.text
        assert decode_png(reply.content).shape == image.shape[:2]
    assert "Traceback" not in server.log()


def test_shutdown_timeout_is_honoured_while_a_batch_runs(fragile):
    server = fragile
    replies = []
    client = threading.Thread(target=lambda: replies.append(_post(server.url, png_bytes(random_image(24, 24, 1)))))
    client.start()
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health").json()["in_progress"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.6)  # past the batch wait: the 8 s forward pass runs
    start = time.monotonic()
    server.proc.send_signal(15)
    server.proc.wait(30)
    took = time.monotonic() - start
    client.join(30)
    assert took < 3.5, f"exited {took:.1f} s after SIGTERM with --shutdown-timeout 1"
    assert server.proc.returncode == 0, server.log()
    assert replies and replies[0].status_code == 503 and "shutting down" in replies[0].json()["error"]
    assert "without waiting for the batch still running" in server.log()


def test_a_missing_serve_extra_is_one_line_and_exit_2(tmp_path):
    script = textwrap.dedent('''
        import sys

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "fastapi":
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, Hide())
        from segzoo.cli import main
        sys.exit(main(sys.argv[1:]))
    ''')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script, "serve", str(tmp_path), "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "fastapi" in lines[0] and 'segzoo[serve]' in lines[0], done.stderr
