"""A server that costs next to nothing, so that a load generator, not the server,
sets the pace in benchmarks/loadtest_ceiling.py: it answers every POST with a
canned stream of completion events in the OpenAI shape (`max_tokens` of them,
one token each, then usage and [DONE]). Streams advance one event per event-loop
turn, as a gateway's decode steps do, so the client receives them as separate
reads rather than one block. Not a gateway: it reads nothing but `max_tokens`.

    python benchmarks/peers/canned_sse.py PORT
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from typing import cast

import httptools
import uvloop

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
MAX_TOKENS = re.compile(rb'"max_tokens":\s*(\d+)')


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(body: dict[str, object]) -> bytes:
    return _chunk(b"data: " + json.dumps(body).encode() + b"\n\n")


TOKEN = _event(
    {"id": "cmpl-canned", "object": "text_completion", "model": "m", "choices": [{"index": 0, "text": " a"}]}
)
DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _usage(tokens: int) -> bytes:
    usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
    return _event({"id": "cmpl-canned", "object": "text_completion", "model": "m", "choices": [], "usage": usage})


class Stream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        match = MAX_TOKENS.search(bytes(self.body))
        self.body.clear()
        tokens = int(match.group(1)) if match else 16
        if self.transport is not None:
            self.transport.write(HEAD)
            asyncio.get_running_loop().call_soon(self.step, tokens, tokens)

    def step(self, left: int, tokens: int) -> None:
        if self.transport is None:
            return
        if left:
            self.transport.write(TOKEN)
            asyncio.get_running_loop().call_soon(self.step, left - 1, tokens)
        else:
            self.transport.write(_usage(tokens) + DONE)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Stream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
