"""The FastAPI application of ``segzoo serve``: health, model description, prediction.

Endpoints:

- ``GET /health``: ``{"live": true, "ready": ...}``; 200 when ready, 503 while starting or stopping.
- ``GET /v1/model``: architecture, classes, input channels and normalization, backend, version.
- ``POST /v1/predict``: the body is an encoded image (``Content-Type: image/*``) or a
  ``multipart/form-data`` form with one file. By default the answer is a PNG mask of the
  image's H x W (``image/png``; 8-bit, 16-bit beyond 256 classes; 0/255 for one-class models);
  ``?format=json`` gives ``{"height", "width", "num_classes", "mask_rle": {"values", "lengths"},
  "class_pixels": {class: count}}`` (run lengths in row-major order); ``?overlay=true`` gives the
  image with the classes blended in; ``?threshold=`` sets one-class models' probability threshold.
- ``GET /docs``: OpenAPI documentation.

Every error is JSON ``{"error": "..."}`` with a 4xx status naming the problem (400 unreadable or
empty body, 408 a body that does not arrive within the read timeout, 413 too many bytes or pixels, 415 content type, 422 an image segzoo does not read or
a bad query option, 503 + ``Retry-After`` when the queue is full).
"""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from segzoo.data.folder import DataError, read_image_bytes
from segzoo.inference import Predictor
from segzoo.inference.processing import class_counts, logits_to_masks, overlay, run_lengths
from segzoo.serve.batching import Batcher, QueueFullError, run_grouped

_BODY = {"requestBody": {"required": True, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}, "required": ["file"]}}}}}


@dataclass
class ServeSettings:
    """Limits and batching of the server (see ``segzoo serve --help``)."""

    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 64
    workers: int = 1
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 25_000_000
    tile: int | None = None
    tile_overlap: int | None = None
    retry_after: int = 1
    read_timeout: float = 30.0
    threads: int | None = None  # intra-op threads per worker, as loaded (None: torch's default)
    keep_memory: bool = False  # glibc keeps freed memory in the process (segzoo.serve.memory)


class ClientError(Exception):
    """A request the server refuses: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_of(exc: DataError) -> int:
    text = str(exc)
    if "over the limit" in text:
        return 413
    if " has mode " in text or " frames" in text or "values in" in text or "cannot be converted" in text:
        return 422
    return 400


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(_read_limited(request, limit), timeout)
    except asyncio.TimeoutError:  # noqa: UP041  (not the builtin before Python 3.11)
        raise ClientError(408, f"the request body did not arrive within {timeout:g} s "
                               f"(segzoo serve --read-timeout)") from None


async def _read_limited(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ClientError(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes "
                               f"(segzoo serve --max-bytes)")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ClientError(413, f"request body is over the limit of {limit} bytes (segzoo serve --max-bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientError(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    async def stream():
        yield body

    try:
        form = await MultiPartParser(Headers(raw=request.headers.raw), stream(), max_files=1, max_fields=16,
                                     max_part_size=64 * 1024).parse()
    except MultiPartException as exc:
        raise ClientError(400, f"malformed multipart body: {exc.message}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise ClientError(400, "the multipart form holds no file; send the image as a file field, e.g. "
                                   "curl -F file=@image.png")
        return await files[0].read()
    finally:
        await form.close()


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        return read_image_bytes(data, max_pixels=max_pixels, name="(request body)")
    except DataError as exc:
        raise ClientError(_status_of(exc), str(exc)) from None


#: zlib level of the PNG answers: 1 encodes a mask 2-4x faster than Pillow's default 6 for a body
#: 20-50% larger (a few KiB for a 256 x 256 mask)
PNG_COMPRESS_LEVEL = 1


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _answer(image: np.ndarray, mask: np.ndarray, fmt: str, with_overlay: bool, num_classes: int) -> Response:
    if with_overlay:
        return Response(_png(overlay(image, mask, num_classes)), media_type="image/png")
    if fmt == "png":
        return Response(_png(mask), media_type="image/png")
    body = {"height": int(mask.shape[0]), "width": int(mask.shape[1]), "num_classes": num_classes,
            "mask_rle": run_lengths(mask), "class_pixels": {str(k): v for k, v in class_counts(mask, num_classes).items()}}
    return Response(json.dumps(body), media_type="application/json")


@dataclass
class _Item:
    """One request's work for the model thread: its decoded image (H, W, 3) and probability threshold."""

    image: np.ndarray
    threshold: float


def _masks(predictor: Predictor, settings: ServeSettings, items: list[_Item]) -> list[np.ndarray]:
    """Masks (H, W) of same-size ``items``: one forward pass; every torch call of a request happens here.

    Run in the batcher's worker thread only, so torch's intra-op threads serve one caller
    instead of competing with the threads that decode and encode PNGs.
    """
    x = torch.stack([predictor.preprocess(item.image) for item in items])
    logits = predictor.logits(x, settings.tile, settings.tile_overlap, max(1, settings.max_batch))
    if len({item.threshold for item in items}) == 1:
        return list(logits_to_masks(logits, items[0].threshold))
    return [logits_to_masks(logits[j:j + 1], item.threshold)[0] for j, item in enumerate(items)]


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (see the module docstring)."""
    settings = settings or ServeSettings()
    num_classes = predictor.num_classes
    description = predictor.describe()

    def run_batch(items: list[_Item]) -> list[np.ndarray]:
        return run_grouped(lambda group: _masks(predictor, settings, group), items, lambda item: item.image.shape)

    batcher = Batcher(run_batch, settings.max_batch, settings.max_wait_ms, settings.queue_size, settings.workers)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()

    app = FastAPI(title="segzoo serve", version=str(description["segzoo_version"]), lifespan=lifespan,
                  description=f"{description['architecture']} on {predictor.name}: image in, mask out.")
    app.state.batcher = batcher
    app.state.settings = settings

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        return _error(422, "; ".join(parts)[:300])

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness and readiness (200 when ready, 503 while starting or stopping)."""
        ready = state["ready"]
        body = {"live": True, "ready": ready, "in_progress": batcher.admitted, "queue_size": settings.queue_size,
                "batches_run": batcher.batches, "images_run": batcher.images,
                "model_busy_s": round(batcher.busy_seconds, 3)}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The served model: architecture, classes, channels, normalization, backend, version, limits."""
        return {**description, "serving": asdict(settings)}

    @app.post("/v1/predict", openapi_extra=_BODY,
              responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def predict(request: Request,
                      format: str = Query("png", pattern="^(png|json)$", description="png (mask) or json"),  # noqa: A002
                      threshold: float | None = Query(None, ge=0.0, le=1.0,
                                                      description="probability threshold (one-class models)"),
                      overlay: bool = Query(False, description="return the image with the mask blended in")):
        """Predict the mask of one image (raw ``image/*`` body or a multipart file)."""
        try:
            with batcher.admit():
                kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if not (kind.startswith("image/") or kind == "multipart/form-data"):
                    raise ClientError(415, f"content type {kind or '(none)'!r} is not accepted; send the image "
                                           f"bytes with Content-Type image/png, image/jpeg, ... or a "
                                           f"multipart/form-data file")
                if threshold is not None and num_classes != 1:
                    raise ClientError(422, f"threshold applies to one-class models; this one has {num_classes} "
                                           f"classes (argmax)")
                if overlay and format == "json":
                    raise ClientError(422, "overlay=true returns a PNG picture; it cannot be combined with format=json")
                body = await _read_body(request, settings.max_bytes, settings.read_timeout)
                if kind == "multipart/form-data":
                    body = await _multipart_file(request, body)
                image = await run_in_threadpool(_decode, body, settings.max_pixels)
                del body
                mask = await batcher.submit(_Item(image, 0.5 if threshold is None else threshold))
                return await run_in_threadpool(_answer, image, mask, format, overlay, num_classes)
        except QueueFullError as exc:
            return _error(503, str(exc), {"Retry-After": str(settings.retry_after)})
        except ClientError as exc:
            return _error(exc.status, exc.message, exc.headers)

    return app
