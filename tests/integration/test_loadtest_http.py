"""The load tester's own HTTP client (leanhttp/client.py) against real servers on
loopback: the session's gateway, and a few lines of asyncio server written here
for what a well-behaved server never does (drop a pooled connection, answer
garbage). Keep-alive connections are reused, a stale one is resent on a fresh
connection, and every failure is an HttpError or TimeoutError, never a hang."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.cli import main as lightgate
from leanhttp.client import Client, HttpError
from leanhttp.local import free_port, server
from tests.conftest import FAST, SLOW
from tests.server import RunningServer

ROOT = Path(__file__).resolve().parents[2]
Chunks = list[tuple[bytes, float]]


def _body(model: str, tokens: int = 4) -> bytes:
    return json.dumps({"model": model, "prompt": "hi", "max_tokens": tokens, "stream": True}).encode()


async def _post(client: Client, body: bytes, path: str = "/v1/completions") -> tuple[int, bytes, Chunks]:
    chunks: Chunks = []
    status, error_body = await client.post(path, body, lambda data, at: chunks.append((data, at)))
    return status, error_body, chunks


def test_streams_arrive_in_order_and_connections_are_reused(gateway: RunningServer) -> None:
    async def main() -> tuple[list[Chunks], int, int]:
        client = Client(gateway.base_url)
        streams = [(await _post(client, _body(FAST)))[2] for _ in range(5)]
        sequential = len(client.idle)
        await asyncio.gather(*(_post(client, _body(FAST)) for _ in range(4)))
        concurrent = len(client.idle)
        client.close()
        return streams, sequential, concurrent

    streams, sequential, concurrent = asyncio.run(main())
    assert (sequential, concurrent) == (1, 4)  # one connection for requests in turn, one per request in flight
    for chunks in streams:
        text = b"".join(data for data, _ in chunks)
        assert text.count(b"data: {") == 4 and text.endswith(b"data: [DONE]\n\n")  # one event a token
        times = [at for _, at in chunks]
        assert times == sorted(times)


def test_an_error_status_returns_its_body(gateway: RunningServer) -> None:
    status, body, chunks = asyncio.run(_post(Client(gateway.base_url), _body("no-such-model")))
    assert status == 404 and chunks == []
    assert "no-such-model" in json.loads(body)["error"]["message"]


def test_no_server_is_an_http_error() -> None:
    with pytest.raises(HttpError, match="cannot connect"):
        asyncio.run(_post(Client(f"http://127.0.0.1:{free_port()}"), b"{}"))


def test_a_timeout_closes_the_connection(gateway: RunningServer) -> None:
    async def main() -> int:
        client = Client(gateway.base_url, timeout_s=0.1)
        with pytest.raises(TimeoutError):
            await _post(client, _body(SLOW, tokens=50))  # 20 ms a token: a second
        return len(client.idle)

    assert asyncio.run(main()) == 0  # half a stream is never handed to the next request


def test_bad_base_urls_are_refused() -> None:
    for url in ("localhost:8000", "ftp://host/", "http://"):
        with pytest.raises(ValueError, match="base URL"):
            Client(url)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 14\r\n\r\ndata: {"a":1}\n'


@asynccontextmanager
async def _raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server that reads each request (headers and Content-Length body) and lets
    `handler` answer it; handler gets the request's number on its connection."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            for number in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(v) for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k == b"Content-Length"
                )
                await reader.readexactly(length)
                await handler(reader, writer, number)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", connections


def test_a_connection_dropped_while_pooled_is_resent_on_a_fresh_one() -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        if number == 0:
            writer.write(OK)
            await writer.drain()
        else:
            writer.close()  # the server dropped the kept-alive connection: no answer at all

    async def main() -> tuple[list[int], list[int], int]:
        async with _raw_server(answer_once) as (url, connections):
            client = Client(url)
            statuses = [(await _post(client, b"{}"))[0] for _ in range(3)]
            client.close()
            return statuses, connections, len(connections)

    statuses, _, opened = asyncio.run(main())
    assert statuses == [200, 200, 200] and opened == 3


def test_a_connection_dropped_mid_response_is_an_error_not_a_resend() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        writer.write(OK[:-10])
        await writer.drain()
        writer.close()

    async def main() -> int:
        async with _raw_server(half) as (url, connections):
            with pytest.raises(HttpError, match="closed"):
                await _post(Client(url), b"{}")
            return len(connections)

    assert asyncio.run(main()) == 1


def test_garbage_is_an_http_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with _raw_server(garbage) as (url, _):
            await _post(Client(url), b"{}")

    with pytest.raises(HttpError, match="unreadable response"):
        asyncio.run(main())


def test_bench_run_against_another_server_without_prometheus_metrics(tmp_path: Path) -> None:
    """The canned SSE server of the ceiling benchmark is not Lightgate: its /metrics
    answers with an event stream. The run works and reports no server figures."""
    port = free_port()
    with server([sys.executable, str(ROOT / "benchmarks/peers/canned_sse.py"), str(port)], port, "/ready") as base:
        args = ["bench", "run", "--base-url", base, "--model", "m", "--prompt", "hi", "--users", "4"]
        assert lightgate([*args, "--requests", "40", "--max-tokens", "8", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "run.json").read_text())["summary"]
    assert (summary["requests"], summary["failed"], summary["server"]) == (40, 0, {})
    assert summary["output_tok_s"] > 0
