"""Every client error comes back as OpenAI's error body with the right status, checked
with raw httpx (the bytes on the wire) and with the openai client (what apps see)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from gateway.config import ModelConfig, Settings
from tests.conftest import FAILING, FAST, SMOL
from tests.server import RunningServer, serve


def post(gateway: RunningServer, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    if isinstance(body, bytes | str):
        return httpx.post(gateway.v1 + path, content=body, headers={"content-type": "application/json"}, **kwargs)
    return httpx.post(gateway.v1 + path, json=body, **kwargs)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    return error


COMPLETION_CASES: list[tuple[Any, str | None]] = [
    ({"prompt": "hi"}, "model"),
    ({"model": SMOL}, "prompt"),
    ({"model": SMOL, "prompt": "hi", "temperature": 9}, "temperature"),
    ({"model": SMOL, "prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"model": SMOL, "prompt": "hi", "top_p": 0}, "top_p"),
    ({"model": SMOL, "prompt": "hi", "n": 0}, "n"),
    ({"model": SMOL, "prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"model": SMOL, "prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"model": SMOL, "prompt": "hi", "logprobs": 6}, "logprobs"),
    ({"model": SMOL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": SMOL, "prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": SMOL, "prompt": "hi", "n": 3, "best_of": 2}, "best_of"),
    ({"model": SMOL, "prompt": "hi", "best_of": 3, "stream": True}, "best_of"),
    ({"model": SMOL, "prompt": "hi", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"model": SMOL, "prompt": "hi", "logit_bias": {"5": 500}}, "logit_bias"),
    ({"model": SMOL, "prompt": "hi", "logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"model": SMOL, "prompt": []}, "prompt"),
    ({"model": SMOL, "prompt": [[1, 2], []]}, "prompt"),
    ({"model": SMOL, "prompt": [1, 99999999]}, "prompt"),
    ({"model": SMOL, "prompt": [1, -2]}, "prompt"),
    ({"model": SMOL, "prompt": [1, "a"]}, "prompt"),
    ({"model": SMOL, "prompt": "hi", "suffix": "end"}, "suffix"),
    ({"model": SMOL, "prompt": "hi", "min_tokens": 20, "max_tokens": 5}, "min_tokens"),
]


@pytest.mark.parametrize(("body", "param"), COMPLETION_CASES)
def test_invalid_completion_requests_are_400_naming_the_param(
    gateway: RunningServer, body: dict[str, Any], param: str
) -> None:
    error = error_of(post(gateway, "/completions", body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


CHAT_CASES: list[tuple[Any, str]] = [
    ({"model": SMOL, "messages": []}, "messages"),
    ({"model": SMOL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": SMOL, "messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    (
        {"model": SMOL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages.0.content",
    ),
]


@pytest.mark.parametrize(("body", "param"), CHAT_CASES)
def test_invalid_chat_requests_are_400_naming_the_param(
    gateway: RunningServer, body: dict[str, Any], param: str
) -> None:
    error = error_of(post(gateway, "/chat/completions", body), 400)
    assert error["param"] is not None and error["param"].startswith(param)


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_bad_json_is_400_not_422_or_500(gateway: RunningServer, raw: bytes) -> None:
    error = error_of(post(gateway, "/completions", raw), 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "\\ud800", "max_tokens": 2}, "prompt"),
        ("/v1/completions", {"prompt": "ok", "stop": ["x\\udfff"], "max_tokens": 2}, "stop"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\\udc00x"}]}, "messages"),
        (
            "/v1/responses",
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "\\ud83d"}]}]},
            "input",
        ),
        ("/tokenize", {"prompt": "a\\ud800b"}, "prompt"),
    ],
)
def test_a_lone_surrogate_is_a_400_and_the_connection_serves_the_next_request(
    gateway: RunningServer, path: str, body: dict[str, Any], param: str
) -> None:
    """JSON can escape half of a UTF-16 pair, which no tokenizer can encode: it once made
    a 500 that closed the connection. The escape is written on the wire as a client sends it."""
    raw = json.dumps({"model": SMOL, **body}).replace("\\\\u", "\\u")
    assert "\\ud" in raw and "\\\\u" not in raw
    with httpx.Client(base_url=gateway.base_url) as c:  # one kept-alive connection
        error = error_of(c.post(path, content=raw, headers={"content-type": "application/json"}), 400)
        assert error["param"] == param and "surrogate" in error["message"]
        after = c.post("/v1/completions", json={"model": SMOL, "prompt": "caf\u00e9 \U0001f600", "max_tokens": 2})
        assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 2


def test_unknown_model_is_404_model_not_found(gateway: RunningServer, client: openai.OpenAI) -> None:
    error = error_of(post(gateway, "/completions", {"model": "gpt-9", "prompt": "hi"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])


def test_context_length_exceeded(gateway: RunningServer, client: openai.OpenAI) -> None:
    body = {"model": SMOL, "prompt": "hi", "max_tokens": 600}  # the test server's n_ctx is 512
    error = error_of(post(gateway, "/completions", body), 400)
    assert error["code"] == "context_length_exceeded"
    long_prompt = "word " * 600
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": long_prompt}])
    assert raised.value.code == "context_length_exceeded"


def test_unsupported_feature_of_a_backend_is_400(gateway: RunningServer) -> None:
    error = error_of(post(gateway, "/completions", {"model": FAST, "prompt": "hi", "logprobs": 1}), 400)
    assert error["code"] == "unsupported_feature"
    error = error_of(post(gateway, "/completions", {"model": FAST, "prompt": "hi", "logprobs": 1, "stream": True}), 400)
    assert error["code"] == "unsupported_feature"


def test_unknown_route_and_wrong_method_use_the_error_body(gateway: RunningServer) -> None:
    error_of(httpx.get(gateway.v1 + "/nothing"), 404)
    error_of(httpx.get(gateway.v1 + "/completions"), 405)


def test_unknown_fields_are_ignored_and_nulls_mean_default(gateway: RunningServer) -> None:
    body = {"model": SMOL, "prompt": "hi", "max_tokens": None, "temperature": None, "frobnicate": 1}
    r = post(gateway, "/completions", body)
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] <= 16


def test_sse_framing(gateway: RunningServer) -> None:
    body = {"model": FAST, "prompt": "hi", "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway.v1 + "/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == ""  # every event ends with a blank line
    assert events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert len(events[:-2]) == 5 + 1  # five tokens and the usage chunk


def test_health_ready_and_models(gateway: RunningServer, client: openai.OpenAI) -> None:
    assert httpx.get(gateway.base_url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway.base_url + "/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == [SMOL, "smol"]
    card = client.models.retrieve(SMOL)
    extra = card.model_extra or {}
    assert extra["max_model_len"] == 512 and extra["backend"] == "llamacpp"
    assert extra["variant"] == "smollm2-135m-instruct-q4_1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_an_engine_error_after_the_stream_began_is_an_error_event_then_done(gateway: RunningServer) -> None:
    body = {"model": FAILING, "prompt": "hi", "max_tokens": 10, "stream": True}
    with httpx.stream("POST", gateway.v1 + "/completions", json=body) as r:
        assert r.status_code == 200  # the status went out with the first token
        events = [line for line in r.iter_lines() if line]
    assert len(events) == 3 + 2
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "injected failure" in error["message"]


def test_an_engine_error_before_any_output_is_a_500_body(gateway: RunningServer) -> None:
    error = error_of(post(gateway, "/completions", {"model": FAILING, "prompt": "hi", "max_tokens": 10}), 500)
    assert error["code"] == "engine_error"


def test_a_dead_engine_takes_its_model_out_of_service_and_fails_liveness() -> None:
    """An engine that dies (vLLM's engine-core process, here the synthetic backend's
    injected death) answers 503 from then on, /ready and /health say so, and the
    gateway's other models keep serving. Its own gateway: the death is for good."""
    dying = ModelConfig(name="dying", backend="synthetic", options={"die_after_tokens": 3})
    with serve(Settings(models=[dying, ModelConfig(name=FAST, backend="synthetic")])) as server:
        assert httpx.get(server.base_url + "/health").status_code == 200
        body = {"model": "dying", "prompt": "hi", "max_tokens": 10, "stream": True}
        with httpx.stream("POST", server.v1 + "/completions", json=body) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line]
        assert len(events) == 3 + 2 and events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "engine_dead")

        after = error_of(post(server, "/completions", {"model": "dying", "prompt": "hi", "max_tokens": 4}), 503)
        assert after["code"] == "model_not_ready" and "engine died" in after["message"]
        ready = httpx.get(server.base_url + "/ready")
        assert ready.status_code == 503 and "engine died" in ready.json()["models"]["dying"]
        health = httpx.get(server.base_url + "/health")
        assert health.status_code == 503 and health.json() == {"status": "engine_dead", "models": ["dying"]}
        assert post(server, "/completions", {"model": FAST, "prompt": "hi", "max_tokens": 4}).status_code == 200
        dead = next(d for d in server.router.deployments if d.name == "dying")
        assert dead.admission.running == 0  # the failed stream gave its slot back
