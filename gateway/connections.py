"""Connection limits uvicorn lacks: a deadline for a request's headers and for its body,
and a cap on open connections. uvicorn closes an idle kept-alive connection
(`timeout_keep_alive`) but waits forever for a request that has begun to arrive, so a
client that sends half a header holds its connection (and a file descriptor) for as
long as it likes; a thousand such clients exhaust the process.

`GuardedHttpToolsProtocol` is uvicorn's httptools protocol with three timers: from the
connection's first byte (or its opening) to the end of the headers, from there to the
end of the body, and the keep-alive one uvicorn has. A client past a deadline gets a
408 (if no response has begun) and the connection is closed. Past `max_connections`,
a new connection is closed as soon as it opens."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import Settings

_TIMEOUT_BODY = (
    b'{"error":{"message":"the request was not received in time","type":"invalid_request_error",'
    b'"param":null,"code":"request_timeout"}}'
)
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 4096

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.abort()  # no answer: it would cost what the cap is there to save
            return
        self._arm(self.header_timeout_s)  # a connection that never sends counts too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not self.transport.is_closing():
            self._arm(self.body_timeout_s)  # the end of the message disarms it, at once if it has no body

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()  # a route waiting for the body sees the disconnect


def protocol_for(settings: Settings) -> type[HttpToolsProtocol]:
    """The protocol class with this gateway's limits (uvicorn takes a class, not an instance)."""
    limits: dict[str, Any] = {
        "header_timeout_s": settings.header_timeout_s,
        "body_timeout_s": settings.body_timeout_s,
        "max_connections": settings.max_connections,
    }
    return type("GatewayHttpProtocol", (GuardedHttpToolsProtocol,), limits)


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's config for the gateway: its limits on connections, and `options` (host,
    port, log level...)."""
    config = uvicorn.Config(app, http=protocol_for(settings), **options)
    # Typed as whole seconds, but uvicorn only hands it to loop.call_later.
    config.timeout_keep_alive = settings.keep_alive_timeout_s  # type: ignore[assignment]
    return config
