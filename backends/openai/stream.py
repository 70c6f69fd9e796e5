"""One upstream response, read by the shared lean HTTP client (leanhttp/client.py:
httptools' parser inside an asyncio protocol). Its reasons apply to a proxy twice over:
every microsecond spent per token is taken from the engine on the same cores. The body
is split into events inside the protocol's callback, and the relaying task wakes once
per network read, not once per event or per layer of a client library."""

from __future__ import annotations

import asyncio
from collections import deque

from backends.openai.sse import Splitter
from backends.relay import Event
from leanhttp.client import Client


class UpstreamStream:
    def __init__(self, client: Client, path: str, body: bytes, headers: bytes = b"") -> None:
        self._splitter = Splitter()
        self._events: deque[Event | object] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.task = asyncio.ensure_future(client.post(path, body, self._on_chunk, headers))
        self.task.add_done_callback(lambda _: self._wake())

    def _on_chunk(self, data: bytes, _arrived: float) -> None:
        self._events.extend(self._splitter.feed(data))
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, silence_s: float) -> Event | object | None:
        """The next event (an Event or sse.DONE), or None once the response has ended
        (`result()` then says how). TimeoutError after `silence_s` without a byte."""
        while not self._events:
            if self.task.done():
                self._events.extend(self._splitter.close())
                if not self._events:
                    return None
                break
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(silence_s):
                    await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()

    def result(self) -> tuple[int, bytes]:
        """The status, and the body of a response that is not a 200; raises what the
        exchange raised (HttpError, TimeoutError for the total timeout)."""
        return self.task.result()

    def close(self) -> None:
        """Stop reading: a response not read to its end closes its connection, which
        tells the upstream to stop generating."""
        if not self.task.done():
            self.task.cancel()
