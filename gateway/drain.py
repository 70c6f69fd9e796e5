"""Graceful shutdown. On SIGTERM (Kubernetes deleting the pod) the gateway turns
not-ready (GET /ready says 503, so the Service stops sending traffic), refuses new
work with 503, lets the requests in flight, streams included, finish up to
`drain_timeout_s`, and only then lets uvicorn stop. A second signal stops at once."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import OpenAIError, error_response

log = logging.getLogger("lightgate")

_PROBES = frozenset({"/health", "/ready", "/metrics"})  # answered while draining


class Drain:
    def __init__(self, on_begin: Callable[[], None] = lambda: None) -> None:
        self.draining = False
        self.in_flight = 0  # requests other than probes and scrapes, until their response ends
        self.on_begin = on_begin  # called on the event loop once draining: every model moves to `draining`

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when nothing is in flight, False if the timeout came first."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight == 0


class DrainMiddleware:
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PROBES:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            refused = OpenAIError(
                503, "the gateway is shutting down; retry on another replica", code="draining",
                headers={"Connection": "close", "Retry-After": "1"},
            )  # fmt: skip
            await error_response(refused)(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn, with the first SIGTERM / SIGINT starting a drain instead of a stop."""

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drainer: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or self._loop is None:
            super().handle_exit(sig, frame)  # the second signal: stop now
            return
        self.drain.draining = True
        log.info(
            "%s: draining (%d requests in flight, up to %.0fs)", signal.Signals(sig).name, self.drain.in_flight,
            self.timeout_s,
        )  # fmt: skip
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self.drain.on_begin()  # on the event loop: the router's state is the loop's
        self._drainer = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        if not await self.drain.wait_idle(self.timeout_s):
            log.warning("drain timeout: %d requests still in flight are cut off", self.drain.in_flight)
        self.should_exit = True
