"""Slow and idle clients, with raw sockets: half a header, half a body, an idle
kept-alive connection, and connections past the cap are all cut off."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from gateway.config import ModelConfig, Settings
from tests.server import RunningServer, serve

TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def strict() -> Iterator[RunningServer]:
    settings = Settings(
        models=[ModelConfig(name="fast", backend="synthetic")],
        header_timeout_s=TIMEOUT_S,
        body_timeout_s=TIMEOUT_S,
        keep_alive_timeout_s=TIMEOUT_S,
        max_connections=8,
    )
    with serve(settings) as server:
        yield server


def connect(server: RunningServer) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


def read_until_closed(s: socket.socket, limit_s: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    began = time.monotonic()
    data = b""
    s.settimeout(limit_s)
    while chunk := s.recv(65536):
        data += chunk
    return data, time.monotonic() - began


def read_response(s: socket.socket) -> bytes:
    """One whole response (its headers, then Content-Length bytes of body)."""
    s.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_half_a_header_is_cut_off_with_408(strict: RunningServer) -> None:
    with connect(strict) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-")
        data, took = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in data
    assert TIMEOUT_S * 0.8 <= took < TIMEOUT_S + 2


def test_a_connection_that_sends_nothing_is_closed(strict: RunningServer) -> None:
    with connect(strict) as s:
        data, took = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408") and took < TIMEOUT_S + 2


def test_half_a_body_is_cut_off(strict: RunningServer) -> None:
    with connect(strict) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b'Content-Length: 100\r\n\r\n{"model": "fast", ')
        data, took = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408") and took < TIMEOUT_S + 2


def test_an_idle_kept_alive_connection_is_closed_and_a_busy_one_is_not(strict: RunningServer) -> None:
    body = b'{"model": "fast", "prompt": "hi", "max_tokens": 1}'
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with connect(strict) as s:
        for _ in range(3):  # requests closer together than the timeout keep it open
            s.sendall(request)
            assert read_response(s).startswith(b"HTTP/1.1 200")
            time.sleep(TIMEOUT_S / 3)
        data, took = read_until_closed(s)
    assert data == b"" and took < TIMEOUT_S + 2  # idle: closed without a word


def test_connections_past_the_cap_are_refused(strict: RunningServer) -> None:
    held = [connect(strict) for _ in range(8)]
    try:
        time.sleep(0.1)
        with connect(strict) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data, took = read_until_closed(extra)
            except ConnectionResetError:
                data, took = b"", 0.0
            assert data == b"" and took < 1  # closed at once, before the deadlines
    finally:
        for s in held:
            s.close()
    time.sleep(0.1)
    with connect(strict) as again:  # the cap counts open connections: room once they close
        again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _ = read_until_closed(again)
    assert data.startswith(b"HTTP/1.1 200")
