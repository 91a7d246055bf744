"""Reading a ``segzoo serve`` request: the body (size, time, memory budget), a multipart file, the image, errors.

Every refusal is a :class:`ClientError` (status and one line), answered as ``{"error": ...}``
by :mod:`segzoo.serve.app`. Images are accepted in :data:`ACCEPTED_FORMATS` only, detected from
the bytes by Pillow restricted to those decoders; their header is read (and checked) before
any pixel is decoded.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import PureWindowsPath
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from segzoo.data.folder import DataError, image_header, read_image_bytes
from segzoo.serve import budget as M

log = logging.getLogger("uvicorn.error")

#: the image formats accepted (Pillow's names, detected from the bytes, whatever the content type
#: says); every other format Pillow knows is refused (415) before any of its decoders runs
ACCEPTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")

class ClientError(Exception):
    """A request the server refuses: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error answer of every status: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_of(exc: DataError) -> int:
    text = str(exc)
    if "over the limit" in text:
        return 413
    if " has mode " in text or " frames" in text or "values in" in text or "cannot be converted" in text:
        return 422
    return 400


async def read_body(request: Request, limit: int, timeout: float, holding: M.Holding) -> bytes:
    """The whole body: at most ``limit`` bytes, within ``timeout`` seconds, each chunk reserved in ``holding``.

    Raises:
        ClientError: 408 (too slow), 413 (too large), 400 (the client went away).
        BudgetFullError: the memory budget has no room for the body now.
    """
    try:
        return await asyncio.wait_for(_read_limited(request, limit, holding), timeout)
    except asyncio.TimeoutError:  # noqa: UP041  (not the builtin before Python 3.11)
        raise ClientError(408, f"the request body did not arrive within {timeout:g} s "
                               f"(segzoo serve --read-timeout)") from None


async def _read_limited(request: Request, limit: int, holding: M.Holding) -> bytes:
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
            holding.take(len(chunk), "the request body")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientError(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def multipart_file(request: Request, body: bytes) -> bytes:
    """The bytes of the (first) file of a ``multipart/form-data`` ``body``; 400 if malformed or without a file."""
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


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in ACCEPTED_FORMATS if f in Image.OPEN)


def _refused_format(data: bytes) -> str | None:
    """The name of a format Pillow knows but segzoo serve refuses, from the magic bytes alone (nothing is parsed)."""
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        if name in ACCEPTED_FORMATS or accept is None:
            continue
        try:
            if accept(prefix):
                return name
        except Exception:  # noqa: S112  (a plugin's check of a short prefix: not this format)
            continue
    return None


def _client_error(exc: DataError, data: bytes) -> ClientError:
    if "not a recognized image file" in str(exc):
        known = _refused_format(data)
        if known:
            return ClientError(415, f"{known} images are not accepted; send {', '.join(_formats())} "
                                    f"(detected from the bytes)")
    return ClientError(_status_of(exc), str(exc))


def read_header(data: bytes, max_pixels: int) -> tuple[int, int, str]:
    """Width, height and mode of an encoded image, from its header; refused as :func:`decode` would refuse it."""
    try:
        return image_header(data, max_pixels=max_pixels, name="(request body)", formats=_formats())
    except DataError as exc:
        raise _client_error(exc, data) from None


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """An encoded image in :data:`ACCEPTED_FORMATS` -> (H, W, 3) as ``segzoo predict`` reads files (400/413/415/422)."""
    try:
        return read_image_bytes(data, max_pixels=max_pixels, name="(request body)", formats=_formats())
    except DataError as exc:
        raise _client_error(exc, data) from None


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def model_failure(exc: Exception, shape: tuple[int, ...], retry_after: int) -> JSONResponse:
    """The answer to a request whose own image made the model fail (the others of its batch were answered)."""
    log.warning("segzoo serve: the model failed on a %dx%d image: %s: %s", shape[1], shape[0],
                type(exc).__name__, _first_line(exc))
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "allocate" in text or "out of memory" in text:
        return error_response(503, f"the server ran out of memory running the model on this {shape[1]}x{shape[0]} "
                                   f"image; retry later or send a smaller image", {"Retry-After": str(retry_after)})
    return error_response(500, f"the model failed on this {shape[1]}x{shape[0]} image: {_first_line(exc)}")


def public_view(value: Any) -> Any:
    """``value`` with every string that is a file path reduced to its name (clients do not see server paths)."""
    if isinstance(value, dict):
        return {k: public_view(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_view(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~", ".")) or PureWindowsPath(value).is_absolute()):
        return PureWindowsPath(value).name  # splits at / and \\ alike
    return value


