"""Disconnects cancel down to the engine and free the slot; a full queue answers 429;
keys, body size and readiness are enforced before any engine work."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.config import ModelConfig, Settings
from tests.conftest import SLOW, SMOL
from tests.server import RunningServer, serve, wait_until

LONG = {"model": SMOL, "prompt": "Count:", "max_tokens": 480, "temperature": 0, "ignore_eos": True}


def idle(gateway: RunningServer, model: str) -> bool:
    d = gateway.router.get(model)
    stats = d.backend.stats()
    return stats.running == 0 and stats.waiting == 0 and d.admission.running == 0 and d.admission.waiting == 0


def test_streaming_disconnect_cancels_in_the_engine(gateway: RunningServer) -> None:
    backend = gateway.router.get(SMOL).backend
    before = backend.stats().generated_tokens
    with httpx.stream("POST", gateway.v1 + "/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()
        events = [next(lines) for _ in range(6)]  # three tokens (each event is a line and a blank)
        assert events[0].startswith("data: {")
    # The client is gone after a few tokens: the engine stops long before 480 and frees its cells.
    assert wait_until(lambda: idle(gateway, SMOL))
    assert backend.stats().kv_cache_usage == 0
    assert backend.stats().generated_tokens - before < LONG["max_tokens"]  # type: ignore[operator]
    # The slot serves the next request.
    r2 = httpx.post(gateway.v1 + "/completions", json={"model": SMOL, "prompt": "Hi", "max_tokens": 2})
    assert r2.status_code == 200


def test_non_streaming_disconnect_cancels_in_the_engine(gateway: RunningServer) -> None:
    backend = gateway.router.get(SMOL).backend
    before = backend.stats().generated_tokens
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.v1 + "/completions", json=LONG, timeout=httpx.Timeout(5.0, read=0.3))
    assert wait_until(lambda: idle(gateway, SMOL))
    assert backend.stats().generated_tokens - before < LONG["max_tokens"]  # type: ignore[operator]


def slow_body(max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": SLOW, "prompt": "x", "max_tokens": max_tokens, "stream": stream}


def test_full_queue_answers_429_with_retry_after(gateway: RunningServer) -> None:
    admission = gateway.router.get(SLOW).admission

    async def scenario() -> tuple[list[int], httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.v1, timeout=30) as c:
            running = asyncio.create_task(c.post("/completions", json=slow_body(25)))
            while admission.running < 1:
                await asyncio.sleep(0.005)
            queued = asyncio.create_task(c.post("/completions", json=slow_body(5)))
            while admission.waiting < 1:
                await asyncio.sleep(0.005)
            rejected = await c.post("/completions", json=slow_body(5))
            done = await asyncio.gather(running, queued)
            return [r.status_code for r in done], rejected

    statuses, rejected = asyncio.run(scenario())
    assert statuses == [200, 200]  # the queued request was served, in turn
    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    assert wait_until(lambda: idle(gateway, SLOW))


def test_a_burst_beyond_the_queue_gets_429s_and_nothing_hangs(gateway: RunningServer) -> None:
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.v1, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/completions", json=slow_body(10, stream=True)) for _ in range(12)))
            return [r.status_code for r in rs]

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1
    assert wait_until(lambda: idle(gateway, SLOW))


def test_a_client_leaving_the_queue_frees_its_place(gateway: RunningServer) -> None:
    admission = gateway.router.get(SLOW).admission

    async def scenario() -> int:
        async with httpx.AsyncClient(base_url=gateway.v1, timeout=30) as c:
            running = asyncio.create_task(c.post("/completions", json=slow_body(25)))
            while admission.running < 1:
                await asyncio.sleep(0.005)
            async with httpx.AsyncClient(base_url=gateway.v1, timeout=httpx.Timeout(5, read=0.1)) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await impatient.post("/completions", json=slow_body(5))
            while admission.waiting:
                await asyncio.sleep(0.005)
            after = await c.post("/completions", json=slow_body(2))  # takes the freed place
            await running
            return after.status_code

    assert asyncio.run(scenario()) == 200


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    not_a_model = tmp_path_factory.mktemp("models") / "broken.gguf"
    not_a_model.write_bytes(b"this is not a GGUF file")
    settings = Settings(
        models=[
            ModelConfig(name="fast", backend="synthetic"),
            ModelConfig(name="broken", backend="llamacpp", path=str(not_a_model)),
        ],
        api_keys=["sk-test"],
        max_body_bytes=2048,
    )
    with serve(settings, wait_ready=False) as server:
        assert wait_until(lambda: server.router.deployments[1].reason is not None)
        yield server


def test_api_keys(guarded: RunningServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.v1, api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=guarded.v1, api_key="sk-test", max_retries=0)
    r = good.completions.create(model="fast", prompt="hi", max_tokens=3)
    assert r.choices[0].text == "The"
    assert httpx.get(guarded.base_url + "/health").status_code == 200  # probes need no key


def test_body_too_large_is_413(guarded: RunningServer) -> None:
    body = {"model": "fast", "prompt": "x" * 4096}
    r = httpx.post(guarded.v1 + "/completions", json=body, headers={"authorization": "Bearer sk-test"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_a_model_that_failed_to_load_is_503_and_not_ready(guarded: RunningServer) -> None:
    ready = httpx.get(guarded.base_url + "/ready")
    assert ready.status_code == 503
    assert "failed to start" in ready.json()["models"]["broken"]
    client = openai.OpenAI(base_url=guarded.v1, api_key="sk-test", max_retries=0)
    with pytest.raises(openai.InternalServerError) as raised:
        client.completions.create(model="broken", prompt="hi")
    assert raised.value.status_code == 503
    assert client.completions.create(model="fast", prompt="hi", max_tokens=1).choices  # the other model serves


def test_a_wait_past_the_deadline_is_refused_at_arrival(gateway: RunningServer) -> None:
    admission = gateway.router.get(SLOW).admission
    assert httpx.post(gateway.v1 + "/completions", json=slow_body(2)).status_code == 200  # a hold time measured
    assert admission.hold_s is not None

    async def scenario() -> tuple[httpx.Response, httpx.Response, int]:
        async with httpx.AsyncClient(base_url=gateway.v1, timeout=30) as c:
            running = asyncio.create_task(c.post("/completions", json=slow_body(25)))
            while admission.running < 1:
                await asyncio.sleep(0.005)
            impatient = await c.post("/completions", json=slow_body(2), headers={"x-max-queue-wait-s": "0"})
            garbled = await c.post("/completions", json=slow_body(2), headers={"x-max-queue-wait-s": "soon"})
            return impatient, garbled, (await running).status_code

    impatient, garbled, first = asyncio.run(scenario())
    assert first == 200
    assert impatient.status_code == 429 and impatient.json()["error"]["code"] == "queue_wait"
    assert int(impatient.headers["retry-after"]) >= 1
    assert garbled.status_code == 400 and "x-max-queue-wait-s" in garbled.json()["error"]["message"]
    assert wait_until(lambda: idle(gateway, SLOW))
