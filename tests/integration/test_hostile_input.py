"""Hostile input, sent the way a broken or malicious client would: malformed JSON and
encodings, a wrong type in every field, numbers out of range, huge lists, token ids
outside the vocabulary, bodies over the limit with and without Content-Length. Each
must get its 4xx in OpenAI's error body, and the same kept-alive connection must then
serve a good request (a 500, or a closed connection, breaks the client's next call)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.protocol import ChatCompletionRequest, CompletionRequest
from tests.conftest import SMOL
from tests.server import RunningServer

GOOD = {"model": SMOL, "prompt": "Hi", "max_tokens": 1}
WRONG = [{"a": 1}, [1, [2]], "text", 1.5e300, True]  # every field gets each of these it does not take


@pytest.fixture
def conn(gateway: RunningServer) -> Iterator[http.client.HTTPConnection]:
    host, port = gateway.base_url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.connect()
    yield c
    c.close()


def exchange(
    c: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Send one request on the connection; its status and parsed error body; then check
    that the same socket serves a good request."""
    sock = c.sock
    c.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    raw = r.read()
    status, closing = r.status, (r.getheader("connection") or "").lower() == "close"
    assert not closing, f"{path} {body[:80]!r}: the server closed the connection after {status}"
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = {"raw": raw[:200]}
    c.request("POST", "/v1/completions", body=json.dumps(GOOD), headers={"Content-Type": "application/json"})
    ok = c.getresponse()
    ok.read()
    assert ok.status == 200 and c.sock is sock, f"the connection did not serve the next request after {body[:80]!r}"
    return status, parsed


def assert_error(status: int, body: dict[str, Any], expected: set[int] | None = None) -> None:
    assert 400 <= status < 500, (status, body)
    if expected is not None:
        assert status in expected, (status, body)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}


MALFORMED = [
    b"{",
    b'{"model": "smollm2-135m", "prompt": "hi"',
    b'{"model": "smollm2-135m", "prompt": "hi"} trailing',
    b"[" * 100_000 + b"]" * 100_000,  # nesting past any recursion limit
    b'{"model": "smollm2-135m", "prompt": "hi", "max_tokens": NaN}',
    b'{"model": "smollm2-135m", "prompt": "hi", "max_tokens": Infinity}',
    b'{"model": "smollm2-135m", "prompt": "hi", "temperature": 1e999}',
    b'{"model": "smollm2-135m", "prompt": "\xff\xfe bad utf-8"}',
    b'\xef\xbb\xbf{"model": "smollm2-135m", "prompt": "hi", "max_tokens": 1, "n": "x"}',
    b'{"model": "smollm2-135m", "prompt": "a\x00b", "max_tokens": -5}',
    b'{"model": "smollm2-135m", "prompt": "hi", "prompt": 5}',
    b'{"model": 12, "prompt": "hi"}',
    b'{"model": ["smollm2-135m"], "prompt": "hi"}',
    b'{"model": "smollm2-135m\\u0000", "prompt": "hi"}',
    b'{"model": "' + b"m" * 100_000 + b'", "prompt": "hi"}',
    b"null",
    b"",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_bodies(conn: http.client.HTTPConnection, raw: bytes) -> None:
    assert_error(*exchange(conn, "/v1/completions", raw))


CHAT_BASE: dict[str, Any] = {"model": SMOL, "messages": [{"role": "user", "content": "hi"}]}


def wrong_type_cases() -> list[tuple[str, str, Any]]:
    cases = []
    forms: list[tuple[str, type[BaseModel], dict[str, Any]]] = [
        ("/v1/completions", CompletionRequest, {"model": SMOL, "prompt": "hi", "max_tokens": 1}),
        ("/v1/chat/completions", ChatCompletionRequest, CHAT_BASE),
    ]
    for path, model, base in forms:
        for field in model.model_fields:
            for value in WRONG:
                try:  # a value the field takes is not a wrong type for it
                    model.model_validate({**base, field: value})
                    continue
                except ValueError:
                    pass
                cases.append((path, field, value))
    return cases


WRONG_TYPES = wrong_type_cases()


@pytest.mark.parametrize(
    ("path", "field", "value"), WRONG_TYPES, ids=[f"{p[4:8]}-{f}-{i % 5}" for i, (p, f, _) in enumerate(WRONG_TYPES)]
)
def test_a_wrong_type_in_every_field(conn: http.client.HTTPConnection, path: str, field: str, value: Any) -> None:
    base: dict[str, Any] = (
        {"model": SMOL, "prompt": "hi", "max_tokens": 1}
        if "chat" not in path
        else {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    )
    status, body = exchange(conn, path, json.dumps({**base, field: value}).encode())
    assert_error(status, body, {400, 404})


HUGE: list[tuple[str, dict[str, Any]]] = [
    ("/v1/completions", {**GOOD, "n": 10**6}),
    ("/v1/completions", {**GOOD, "n": 10**30}),
    ("/v1/completions", {**GOOD, "best_of": 10**6}),
    ("/v1/completions", {**GOOD, "max_tokens": 10**12}),
    ("/v1/completions", {**GOOD, "max_tokens": 2**63}),
    ("/v1/completions", {**GOOD, "seed": 2**80}),
    ("/v1/completions", {**GOOD, "seed": -(2**80)}),
    ("/v1/completions", {**GOOD, "logprobs": 10**6}),
    ("/v1/completions", {**GOOD, "top_k": 10**12}),
    ("/v1/completions", {**GOOD, "min_tokens": 10**12}),
    ("/v1/completions", {**GOOD, "temperature": -1e-300}),
    ("/v1/completions", {**GOOD, "frequency_penalty": 1e308}),
    ("/v1/completions", {**GOOD, "logit_bias": {str(i): 1 for i in range(20_000)}}),
    ("/v1/completions", {**GOOD, "logit_bias": {"1": 1e308}}),
    ("/v1/completions", {**GOOD, "stop": ["x"] * 10_000}),
    ("/v1/completions", {**GOOD, "stop": "x" * 100_000}),
    ("/v1/completions", {**GOOD, "prompt": ["hi"] * 10_000}),
    ("/v1/completions", {**GOOD, "prompt": [[1]] * 10_000, "n": 2}),
    ("/v1/completions", {**GOOD, "prompt": "hi " * 300_000}),
    ("/v1/completions", {**GOOD, "prompt": [10**12]}),
    ("/v1/completions", {**GOOD, "prompt": [49152]}),
    ("/v1/completions", {**GOOD, "prompt": [-1]}),
    ("/v1/completions", {**GOOD, "logit_bias": {"-3": 1}}),
    ("/v1/chat/completions", {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 10**6}),
    ("/v1/chat/completions", {"model": SMOL, "messages": [{"role": "user", "content": "hi"}] * 50_000}),
    ("/v1/chat/completions", {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "n": 10**4}),
    ("/v1/embeddings", {"model": SMOL, "input": "hi"}),
    ("/detokenize", {"model": SMOL, "tokens": [10**9]}),
    ("/detokenize", {"model": SMOL, "tokens": [-7]}),
    ("/tokenize", {"model": SMOL, "prompt": 5}),
]


@pytest.mark.parametrize(("path", "body"), HUGE, ids=range(len(HUGE)))
def test_out_of_range_and_huge_values(conn: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> None:
    status, error = exchange(conn, path, json.dumps(body).encode())
    assert_error(status, error)


def test_a_body_over_the_limit_with_content_length(conn: http.client.HTTPConnection) -> None:
    big = json.dumps({**GOOD, "prompt": "x" * (5 * 1024 * 1024)}).encode()
    status, error = exchange(conn, "/v1/completions", big)
    assert_error(status, error, {413})


def test_a_body_over_the_limit_without_content_length(conn: http.client.HTTPConnection) -> None:
    """Chunked transfer: no length up front, so the body is counted as it arrives."""
    big = json.dumps({**GOOD, "prompt": "x" * (5 * 1024 * 1024)}).encode()
    sock = conn.sock
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    step = 256 * 1024
    for i in range(0, len(big), step):
        piece = big[i : i + step]
        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    body = json.loads(r.read())
    assert_error(r.status, body, {413})
    # The rest of the body was read past and dropped: the connection serves on.
    conn.request("POST", "/v1/completions", body=json.dumps(GOOD), headers={"Content-Type": "application/json"})
    ok = conn.getresponse()
    ok.read()
    assert ok.status == 200 and conn.sock is sock
