"""segzoo serve over real HTTP on 127.0.0.1: masks, batching, bad input, queue limits, SIGTERM."""

from __future__ import annotations

import io
import os
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from _serving import SLOW_MODELS, Server, decode_png, png_bytes, random_image, user_model_checkpoint
from PIL import Image

from segzoo.cli import main
from segzoo.serve.memory import GLIBC_VARIABLES

pytestmark = pytest.mark.slow  # each module starts `segzoo serve` subprocesses

SIZES = [(64, 64), (48, 80), (37, 53)]


def _post(url: str, data: bytes, content_type: str = "image/png", params=None, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/predict", content=data, headers={"Content-Type": content_type}, params=params,
                      timeout=60, **kwargs)


def _predict_cli(logdir, images: dict[str, np.ndarray], tmp_path) -> dict[str, np.ndarray]:
    """Masks that `segzoo predict` writes for the same images."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, array in images.items():
        Image.fromarray(array).save(folder / f"{name}.png")
    assert main(["predict", str(logdir), "--input", str(folder), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    out = {}
    for name in images:
        with Image.open(tmp_path / "out" / f"{name}.png") as img:
            out[name] = np.asarray(img)
    return out


def test_health_model_and_docs(served):
    server, _ = served
    health = httpx.get(server.url + "/health").json()
    assert health["live"] and health["ready"]
    info = httpx.get(server.url + "/v1/model").json()
    assert info["architecture"] == "unet" and info["num_classes"] == 3 and info["in_channels"] == 3
    assert info["normalization"]["mean"] == [0.4, 0.5, 0.6] and info["backend"] == "eager"
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None
    user_set = any(k in os.environ for k in GLIBC_VARIABLES)
    assert info["serving"]["keep_memory"] is (glibc and not user_set)  # segzoo.serve.memory, on by default
    assert info["serving"]["threads"] == 1  # as given (tests/_serving.py)
    assert httpx.get(server.url + "/docs").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/predict" in spec["paths"]


def test_concurrent_requests_of_different_sizes_get_their_own_masks_equal_to_predict(served, tmp_path):
    server, logdir = served
    images = {f"im{i}": random_image(*SIZES[i % 3], seed=i) for i in range(12)}
    expected = _predict_cli(logdir, images, tmp_path)
    before = httpx.get(server.url + "/health").json()
    with ThreadPoolExecutor(12) as pool:
        replies = dict(zip(images, pool.map(lambda a: _post(server.url, png_bytes(a)), images.values())))
    for name, reply in replies.items():
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "image/png"
        mask = decode_png(reply.content)
        assert mask.shape == images[name].shape[:2]
        np.testing.assert_array_equal(mask, expected[name], err_msg=name)
    assert len({decode_png(r.content).tobytes() for r in replies.values()}) > 3  # not one answer for all
    after = httpx.get(server.url + "/health").json()
    assert after["images_run"] - before["images_run"] == 12
    assert after["batches_run"] - before["batches_run"] < 12  # some requests shared a batch


def test_multipart_json_and_overlay(served):
    server, _ = served
    image = random_image(40, 56, seed=3)
    data = png_bytes(image)
    mask = decode_png(_post(server.url, data).content)
    form = httpx.post(server.url + "/v1/predict", files={"file": ("a.png", data, "image/png")}, timeout=60)
    assert form.status_code == 200
    np.testing.assert_array_equal(decode_png(form.content), mask)
    reply = _post(server.url, data, params={"format": "json"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json()
    rle = body["mask_rle"]
    np.testing.assert_array_equal(np.repeat(rle["values"], rle["lengths"]).reshape(40, 56), mask)
    assert sum(body["class_pixels"].values()) == 40 * 56
    assert {int(k): v for k, v in body["class_pixels"].items()} == {
        int(c): int((mask == c).sum()) for c in np.unique(mask)}
    over = decode_png(_post(server.url, data, params={"overlay": "true"}).content)
    assert over.shape == (40, 56, 3)


def test_image_modes_are_read_like_files(served):
    server, _ = served
    rgb = random_image(32, 48, seed=5)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    base = decode_png(_post(server.url, png_bytes(rgb)).content)
    np.testing.assert_array_equal(decode_png(_post(server.url, png_bytes(rgba)).content), base)  # alpha dropped
    grey16 = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    reply = _post(server.url, buf.getvalue())
    assert reply.status_code == 200 and decode_png(reply.content).shape == (32, 48)
    palette = png_bytes(rgb, mode="P")
    assert _post(server.url, palette).status_code == 200


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buf, format="PNG")  # 9 Mpixels in a few KB
    return buf.getvalue()


def _five_channel_tiff() -> bytes:
    """A 2x2 TIFF with 5 samples per pixel (RGB + 2 extra), which segzoo does not read."""
    pixels = bytes(range(20))
    entries = [(256, 3, 1, 2), (257, 3, 1, 2), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 0), (277, 3, 1, 5), (278, 3, 1, 2), (279, 4, 1, len(pixels)), (338, 3, 1, 0)]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = data_offset if tag == 273 else value
        out += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                        else struct.pack("<I", value))
    return out + struct.pack("<I", 0) + pixels


def _animated_png() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


@pytest.mark.parametrize("data, content_type, status, fragment", [
    (b"this is not an image", "image/png", 400, "not a recognized image"),
    (b"", "image/png", 400, "empty"),
    (b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(400000), "image/png", 413,
     "over the limit of 300000 bytes"),
    (_bomb(), "image/png", 413, "over the limit of 200000 pixels"),
    (_five_channel_tiff(), "image/tiff", 400, "cannot read image"),
    (_animated_png(), "image/png", 422, "2 frames"),
    (png_bytes(np.zeros((8, 8, 3), np.uint8)), "text/plain", 415, "content type 'text/plain'"),
    (png_bytes(np.zeros((8, 8, 3), np.uint8)), "application/json", 415, "is not accepted"),
])
def test_bad_input_is_a_4xx_json_error_and_the_server_keeps_serving(served, data, content_type, status, fragment):
    server, _ = served
    reply = _post(server.url, data, content_type)
    assert reply.status_code == status, reply.text
    assert fragment in reply.json()["error"]
    assert _post(server.url, png_bytes(random_image(16, 16, 1))).status_code == 200


@pytest.mark.parametrize("params, fragment", [
    ({"threshold": "2"}, "threshold"), ({"threshold": "0.3"}, "one-class models"),
    ({"format": "bmp"}, "format"), ({"format": "json", "overlay": "true"}, "overlay"),
])
def test_bad_query_options_are_422(served, params, fragment):
    server, _ = served
    reply = _post(server.url, png_bytes(random_image(16, 16, 1)), params=params)
    assert reply.status_code == 422 and fragment in reply.json()["error"], reply.text


def test_chunked_body_over_the_limit_is_413(served):
    server, _ = served
    chunks = (np.random.default_rng(1).bytes(50000) for _ in range(10))  # no Content-Length: streamed
    reply = httpx.post(server.url + "/v1/predict", content=chunks, headers={"Content-Type": "image/png"}, timeout=30)
    assert reply.status_code == 413 and "over the limit" in reply.json()["error"]
    assert _post(server.url, png_bytes(random_image(16, 16, 1))).status_code == 200


def test_multipart_without_a_file_and_malformed_multipart(served):
    server, _ = served
    reply = httpx.post(server.url + "/v1/predict", data={"x": "1"}, files={}, timeout=30,
                       headers={"Content-Type": "multipart/form-data; boundary=abc"})
    assert reply.status_code == 400 and "error" in reply.json()
    reply = httpx.post(server.url + "/v1/predict", data={"x": "1"}, files={"y": ("y.txt", b"", "text/plain")},
                       timeout=30)
    assert reply.status_code == 400 and "cannot read image" in reply.json()["error"]


def test_client_disconnecting_mid_request(served):
    server, _ = served
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 100000\r\n\r\n" + png_bytes(random_image(16, 16, 2))[:50])
    time.sleep(0.3)
    assert _post(server.url, png_bytes(random_image(16, 16, 1))).status_code == 200
    assert "Traceback" not in server.log() and "500" not in server.log()


def _read_reply(sock: socket.socket) -> str:
    """The whole HTTP reply: headers and a body of Content-Length bytes (they may come in several packets)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode()
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_stalled_body_is_408_and_frees_its_place(served):
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 5000\r\n\r\n" + b"\x89PNG")
        sock.settimeout(10)
        reply = _read_reply(sock)
    assert reply.startswith("HTTP/1.1 408") and "did not arrive within 2 s" in reply
    assert httpx.get(server.url + "/health").json()["in_progress"] == 0
    assert _post(server.url, png_bytes(random_image(16, 16, 1))).status_code == 200


def _slow_server(tmp_path, *args):
    ckpt, folder = user_model_checkpoint(tmp_path, "serve_slow_models", SLOW_MODELS, "slow")
    return Server(ckpt, "--model", "serve_slow_models:slow", *args, tmp=tmp_path, pythonpath=folder)


def test_full_queue_is_503_with_retry_after(tmp_path):
    server = _slow_server(tmp_path, "--queue-size", "2", "--max-batch", "1")
    try:
        data = png_bytes(random_image(16, 16, 1))
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: _post(server.url, data), range(6)))
        codes = sorted(r.status_code for r in replies)
        assert 200 in codes and 503 in codes, codes
        busy = next(r for r in replies if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1" and "busy" in busy.json()["error"]
        assert _post(server.url, data).status_code == 200  # served again once the queue drained
    finally:
        assert server.stop() == 0, server.log()
    assert "stores no normalization" in server.log()  # the checkpoint had none: warned, ImageNet used


def test_sigterm_answers_requests_in_flight_then_exits_0(tmp_path):
    server = _slow_server(tmp_path, "--max-batch", "1", "--workers", "2")
    data = png_bytes(random_image(16, 16, 1))
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(_post(server.url, data))) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health").json()["in_progress"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.proc.send_signal(15)
    for t in threads:
        t.join(60)
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()


def test_a_port_in_use_or_a_bad_source_is_one_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", str(tmp_path), "--port", str(port)])
        err = capsys.readouterr().err
        assert code == 2 and "the port is in use" in err and len(err.strip().splitlines()) == 1
    code = main(["serve", str(tmp_path / "missing"), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tmp_path), "--max-batch", "0"])
    assert exit_info.value.code == 2 and "max batch must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # it was an OverflowError traceback from uvicorn's bind
        main(["serve", str(tmp_path), "--port", "99999"])
    assert exit_info.value.code == 2 and "port must be <= 65535, got 99999" in capsys.readouterr().err
