"""A lean HTTP/1.1 client for streaming POSTs, shared by the load tester and the relay
backend: asyncio protocols and httptools' C parser (the one uvicorn serves with),
keep-alive connections pooled, one request in flight per connection.

Why not aiohttp: a load generator shares the machine with what it measures, and a
relay the machine with its engine, so every microsecond of its CPU is taken from
the server. aiohttp wakes the reading task once per network read and builds a
response object, headers and stream reader per request; here the body goes
straight from the parser to a callback inside the protocol, and the awaiting task
wakes once, when the response ends.
That halves the tester's CPU per request (docs/benchmarks.md, "Its own ceiling").
Plain HTTP and HTTPS (the ssl context of the standard library); no proxies, no
redirects, no HTTP/2: a load test or a relay names its server directly."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

OnChunk = Callable[[bytes, float], None]  # (body bytes, perf_counter when they arrived)


class HttpError(Exception):
    """The exchange failed: no connection, the connection dropped, or an unreadable response."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; httptools calls the on_* methods while it parses."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.on_chunk: OnChunk | None = None
        self.status = 0
        self.error_body = bytearray()  # the body of a response that is not a 200
        self.arrived = 0.0
        self.got_bytes = False
        self.keep_alive = False
        self.complete = False  # the last response was read to its end

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.arrived = time.perf_counter()  # one clock reading per network read
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(HttpError(f"unreadable response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._finish(HttpError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    # httptools callbacks

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.status == 200 and self.on_chunk is not None:
            self.on_chunk(body, self.arrived)
        else:
            self.error_body += body

    def on_message_complete(self) -> None:
        self.complete = True
        self._finish(None)

    # the request

    @property
    def reusable(self) -> bool:
        # Not after a timeout or a cancellation: the rest of that response would still arrive.
        return self.transport is not None and self.keep_alive and self.complete

    async def exchange(self, request: bytes, on_chunk: OnChunk) -> int:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.on_chunk, self.status, self.keep_alive, self.got_bytes, self.complete = on_chunk, 0, False, False, False
        self.error_body.clear()
        self.transport.write(request)
        return await self.done

    def _finish(self, error: Exception | None) -> None:
        if self.done is None or self.done.done():
            return
        if error is None:
            self.done.set_result(self.status)
        else:
            self.done.set_exception(error)
        self.on_chunk = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    """POSTs to one server, over as many keep-alive connections as requests in flight."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base URL must be http:// or https:// with a host, got {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.prefix = url.path.rstrip("/")
        default_port = self.port == (443 if url.scheme == "https" else 80)
        host_header = url.netloc.rpartition("@")[2] if not default_port else self.host
        lines = [f"Host: {host_header}", "Content-Type: application/json", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.header_block = ("\r\n".join(lines) + "\r\n").encode()
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[_Connection] = []

    async def post(self, path: str, body: bytes, on_chunk: OnChunk, headers: bytes = b"") -> tuple[int, bytes]:
        """Send one POST; the body of a 200 goes to `on_chunk` as it arrives. Returns the
        status and, for any other status, the response body. Raises HttpError or TimeoutError.
        `headers`: more header lines for this request only, each ending in CRLF."""
        request = b"".join(
            (
                f"POST {self.prefix}{path} HTTP/1.1\r\n".encode(),
                self.header_block,
                headers,
                f"Content-Length: {len(body)}\r\n\r\n".encode(),
                body,
            )
        )
        async with asyncio.timeout(self.timeout_s):
            while self.idle:
                # A pooled connection may have been closed by the server while idle; that
                # shows as a failure before any byte came back, and then it is safe to resend.
                conn = self.idle.pop()
                if conn.transport is None:
                    continue  # closed while idle, and we heard of it
                try:
                    return await self._exchange(conn, request, on_chunk)
                except HttpError:
                    if conn.got_bytes:
                        raise
            return await self._exchange(await self._connect(), request, on_chunk)

    async def _exchange(self, conn: _Connection, request: bytes, on_chunk: OnChunk) -> tuple[int, bytes]:
        try:
            status = await conn.exchange(request, on_chunk)
            return status, bytes(conn.error_body)
        finally:
            if conn.reusable:
                self.idle.append(conn)
            else:
                conn.close()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl)
        except TimeoutError as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: timed out") from exc
        except OSError as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        return conn

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
