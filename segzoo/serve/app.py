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
  A model built with ``aux_params`` also answers its image-level labels: ``"labels": [K' numbers]`` in
  the JSON, and the header ``X-Segzoo-Labels`` (the same JSON list) with a PNG; ``GET /v1/model`` then
  shows ``aux_classes``. Models without them answer exactly as before.
- ``GET /docs``: OpenAPI documentation.

Every answer that is not 200, whatever its status (404, 405 and 500 included), has the body
``{"error": "<one line naming the problem>"}`` (``application/json``): 400 unreadable or empty
body, 408 headers or body that do not arrive in time, 413 too many bytes, pixels (also once
padded for the model) or memory, 415 content type or an image format not accepted
(:data:`ACCEPTED_FORMATS`, detected from the bytes), 422 an image mode segzoo does not read or a
bad query option, 500 the model failed on this image (the other requests of its batch are
answered), 503 + ``Retry-After`` when the queue or the memory budget is full or the server is
stopping. Memory: :mod:`segzoo.serve.budget`.
"""

from __future__ import annotations

import dataclasses
import io
import json
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import PureWindowsPath
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from segzoo.inference import Predictor
from segzoo.inference.processing import class_counts, logits_to_masks, overlay, run_lengths
from segzoo.serve import budget as M
from segzoo.serve.batching import Batcher, QueueFullError, ShuttingDownError, run_grouped
from segzoo.serve.requests import (  # noqa: F401  (ACCEPTED_FORMATS, ClientError: public names of this module)
    ACCEPTED_FORMATS,
    ClientError,
    decode,
    error_response,
    model_failure,
    multipart_file,
    public_view,
    read_body,
    read_header,
)

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
    header_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    max_memory: int | None = None  # bytes all requests may reserve (None: segzoo.serve.budget.default_budget())
    bytes_per_pixel: int | None = None  # model working memory per padded pixel (None: measured at start-up)
    threads: int | None = None  # intra-op threads per worker, as loaded (None: torch's default)
    keep_memory: bool = False  # glibc keeps freed memory in the process (segzoo.serve.memory)


#: zlib level of the PNG answers: 1 encodes a mask 2-4x faster than Pillow's default 6 for a body
#: 20-50% larger (a few KiB for a 256 x 256 mask)
PNG_COMPRESS_LEVEL = 1


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _answer(image: np.ndarray, mask: np.ndarray, fmt: str, with_overlay: bool, num_classes: int,
            labels: np.ndarray | None = None) -> Response:
    found = [float(v) for v in labels] if labels is not None else None
    headers = {"X-Segzoo-Labels": json.dumps(found)} if found is not None else None
    if with_overlay:
        return Response(_png(overlay(image, mask, num_classes)), media_type="image/png", headers=headers)
    if fmt == "png":
        return Response(_png(mask), media_type="image/png", headers=headers)
    body = {"height": int(mask.shape[0]), "width": int(mask.shape[1]), "num_classes": num_classes,
            "mask_rle": run_lengths(mask), "class_pixels": {str(k): v for k, v in class_counts(mask, num_classes).items()}}
    if found is not None:
        body["labels"] = found
    return Response(json.dumps(body), media_type="application/json")


@dataclass
class _Item:
    """One request's work for the model thread: its decoded image (H, W, 3) and probability threshold."""

    image: np.ndarray
    threshold: float


def _masks(predictor: Predictor, settings: ServeSettings, items: list[_Item]) -> list[tuple[np.ndarray, Any]]:
    """``(mask (H, W), labels (K',) or None)`` of same-size ``items``: one forward pass; every torch call of a
    request happens here.

    Run in the batcher's worker thread only, so torch's intra-op threads serve one caller
    instead of competing with the threads that decode and encode PNGs.
    """
    x = torch.stack([predictor.preprocess(item.image) for item in items])
    logits, labels = predictor.logits_and_labels(x, settings.tile, settings.tile_overlap, max(1, settings.max_batch))
    if len({item.threshold for item in items}) == 1:
        masks = list(logits_to_masks(logits, items[0].threshold))
    else:
        masks = [logits_to_masks(logits[j:j + 1], item.threshold)[0] for j, item in enumerate(items)]
    return [(mask, labels[j].numpy() if labels is not None else None) for j, mask in enumerate(masks)]


def _padding(predictor: Predictor) -> tuple[int, int]:
    """(multiple, least): the model runs on H, W rounded up to ``multiple``, at least ``least`` (the model's own
    size multiple, which segzoo models pad to inside, or the backend's)."""
    multiple = max(int(predictor.size_multiple), int(predictor.backend.pad_multiple))
    return multiple, max(1, int(predictor.backend.min_size))


def _with_budget(predictor: Predictor, settings: ServeSettings) -> ServeSettings:
    """``settings`` with ``max_memory`` and ``bytes_per_pixel`` resolved (the latter measured by one probe pass)."""
    max_memory = settings.max_memory if settings.max_memory is not None else M.default_budget()
    bytes_per_pixel = settings.bytes_per_pixel
    if bytes_per_pixel is None:
        multiple, least = _padding(predictor)
        side = M.padded(M.PROBE_SIDE, multiple, least)
        x = torch.zeros(1, predictor.in_channels, side, side)
        try:
            measured = M.measure_bytes_per_pixel(lambda: predictor(x), side * side)
        except Exception:  # noqa: BLE001  (e.g. a model exported for one input size: budget without a measurement)
            measured = None
        bytes_per_pixel = M.model_bytes_per_pixel(measured, predictor.in_channels, predictor.num_classes)
    return dataclasses.replace(settings, max_memory=int(max_memory), bytes_per_pixel=int(bytes_per_pixel))


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (see the module docstring).

    Unset ``settings.max_memory`` / ``bytes_per_pixel`` are resolved first (one forward pass
    measures the model's working memory); ``app.state.settings`` holds the values in force.
    """
    settings = _with_budget(predictor, settings or ServeSettings())
    num_classes = predictor.num_classes
    description = public_view({**predictor.describe(), "source": PureWindowsPath(str(predictor.info.get("source") or "")).name
                           or None})
    budget = M.MemoryBudget(settings.max_memory)
    multiple, least = _padding(predictor)
    tiles_per_pass = max(1, settings.max_batch)

    def run_batch(items: list[_Item]) -> list[tuple[np.ndarray, Any]]:
        return run_grouped(lambda group: _masks(predictor, settings, group), items, lambda item: item.image.shape)

    dims = getattr(predictor.backend, "dims", None)  # a .pt2 program's accepted sizes per input dimension

    def reserve(holding: M.Holding, width: int, height: int, mode: str, rich: bool) -> None:
        """Refuse an image the program cannot take (422) or too large for the model or the budget (413), from its
        header; else reserve its memory."""
        if dims is not None and len(dims) == 4 and settings.tile is None:
            ph, pw = M.padded(height, multiple, least), M.padded(width, multiple, least)
            if not (dims[2].accepts(ph) and dims[3].accepts(pw)):
                raise ClientError(422, f"image {width}x{height} (run at {pw}x{ph}) is not a size this model takes: "
                                       f"{predictor.backend.takes()}")
        pixels = M.model_pixels(height, width, multiple, least, settings.tile, tiles_per_pass)
        if settings.tile is None and pixels > settings.max_pixels:
            raise ClientError(413, f"image {width}x{height} is padded to {M.padded(width, multiple, least)}x"
                                   f"{M.padded(height, multiple, least)} for the model (size multiple {multiple}, at "
                                   f"least {least}): {pixels / 1e6:.1f} Mpixels, over the limit of "
                                   f"{settings.max_pixels} pixels (segzoo serve --max-pixels)")
        need = M.request_bytes(height, width, mode, pixels, settings.bytes_per_pixel, num_classes,
                               settings.tile is not None, rich)
        if need + holding.amount > budget.limit:
            raise ClientError(413, f"image {width}x{height} needs about {(need + holding.amount) / M.MIB:.0f} MiB to "
                                   f"run, over the server's memory budget of {budget.limit / M.MIB:.0f} MiB "
                                   f"(segzoo serve --max-memory); send a smaller image")
        holding.take(need, f"the {width}x{height} image")

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
            # uvicorn has already waited --shutdown-timeout for the requests; what is left is abandoned
            await batcher.stop(timeout=0.5)

    app = FastAPI(title="segzoo serve", version=str(description["segzoo_version"]), lifespan=lifespan,
                  description=f"{description['architecture']} on {predictor.name}: image in, mask out.")
    app.state.batcher = batcher
    app.state.settings = settings
    app.state.budget = budget

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        return error_response(422, "; ".join(parts)[:300])

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # a bug: uvicorn logs its traceback
        return error_response(500, "internal server error (the server log has the details)")

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness and readiness (200 when ready, 503 while starting or stopping)."""
        ready = state["ready"]
        body = {"live": True, "ready": ready, "in_progress": batcher.admitted, "queue_size": settings.queue_size,
                "batches_run": batcher.batches, "images_run": batcher.images,
                "model_busy_s": round(batcher.busy_seconds, 3), "memory_reserved": budget.used,
                "max_memory": budget.limit}
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
        retry = {"Retry-After": str(settings.retry_after)}
        try:
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
            with budget.hold() as holding:
                # the body is read before a queue place is taken: a slow upload holds no place
                body = await read_body(request, settings.max_bytes, settings.read_timeout, holding)
                if kind == "multipart/form-data":
                    body = await multipart_file(request, body)
                    holding.take(len(body), "the multipart file")
                width, height, mode = await run_in_threadpool(read_header, body, settings.max_pixels)
                reserve(holding, width, height, mode, overlay or format == "json")
                with batcher.admit():
                    image = await run_in_threadpool(decode, body, settings.max_pixels)
                    del body
                    try:
                        mask, labels = await batcher.submit(_Item(image, 0.5 if threshold is None else threshold))
                    except ShuttingDownError as exc:
                        return error_response(503, str(exc), retry)
                    except Exception as exc:  # this image made the model fail; the rest of its batch was answered
                        return model_failure(exc, image.shape, settings.retry_after)
                    return await run_in_threadpool(_answer, image, mask, format, overlay, num_classes, labels)
        except (QueueFullError, M.BudgetFullError) as exc:
            return error_response(503, str(exc), retry)
        except M.OverBudgetError as exc:
            return error_response(413, str(exc))
        except ClientError as exc:
            return error_response(exc.status, exc.message, exc.headers)

    return app
