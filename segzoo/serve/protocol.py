"""The HTTP/1.1 connection handling of ``segzoo serve``: uvicorn's h11 protocol with a header deadline and JSON errors.

uvicorn closes connections idle between requests (``timeout_keep_alive``) but gives a client
all the time it wants to send a request's headers: a connection that sent half a request line,
or a byte every few seconds, stayed open for ever. Here each request's headers must arrive
within ``header_timeout`` seconds of the connection being opened (or of the previous answer on
it); otherwise the server answers 408 with segzoo's JSON error body and closes the connection
(a connection on which nothing was sent is closed without an answer).
The body then has ``--read-timeout`` (see :mod:`segzoo.serve.app`). Requests that h11 cannot
parse (bad request line, headers over :data:`MAX_HEADER_BYTES`) get a JSON 400 instead of
uvicorn's plain text.

This module imports uvicorn and h11 (the ``serve`` extra), not torch.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: largest request line + headers accepted (h11's own default, made explicit)
MAX_HEADER_BYTES = 16 * 1024


def _raw_json_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n")
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's ``H11Protocol`` with a deadline for request headers (see the module docstring).

    Use :func:`protocol_class` to set :attr:`header_timeout`.
    """

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline of the connection's first request."""
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed h11; once a request's headers are complete, its deadline is lifted."""
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        """After an answer on a kept-alive connection, the next request's headers get a new deadline."""
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 cannot parse with a JSON 400, then close."""
        if self.transport.is_closing():
            return
        self.transport.write(_raw_json_response(
            400, "Bad Request", f"malformed HTTP request (bad request line or headers, or headers over "
                                f"{MAX_HEADER_BYTES} bytes): {msg}"))
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if not self.conn.trailing_data[0]:  # nothing of a request received: an idle connection, closed quietly
            self.transport.close()
            return
        self.transport.write(_raw_json_response(
            408, "Request Timeout", f"the request headers did not arrive within {self.header_timeout:g} s "
                                    f"(segzoo serve --header-timeout)"))
        self.transport.close()


def protocol_class(header_timeout: float) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class whose header deadline is ``header_timeout`` seconds (uvicorn's ``http=``)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": float(header_timeout)})
