"""Tenants on a real server: keys with names and rights, per-minute limits with
OpenAI's headers, concurrency, fair admission, usage under the key's name, and keys
reloaded from a file (and on SIGHUP) without a restart. The models are synthetic
(byte tokens: a prompt of k ASCII characters is k tokens), which makes the token
arithmetic exact; the limits are the gateway's and do not depend on the engine."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from gateway.config import ModelConfig, Settings
from gateway.tenants import TenantConfig
from leanhttp.local import free_port
from tests.metrics_util import scrape, value
from tests.server import RunningServer, serve, wait_until

ALICE, BOB, CAROL, BATCH = "sk-alice-0001", "sk-bob-0002", "sk-carol-0003", "sk-batch-0004"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "tenants.yaml"
    path.write_text(yaml.safe_dump([{"name": "carol", "key": CAROL}]))
    return path


@pytest.fixture(scope="module")
def tenanted(tenants_file: Path) -> Iterator[RunningServer]:
    bob_hash = "sha256:" + hashlib.sha256(BOB.encode()).hexdigest()  # as a Secret would hold it
    settings = Settings(
        models=[
            ModelConfig(name="fast", backend="synthetic"),
            ModelConfig(name="other", backend="synthetic"),
            ModelConfig(
                name="slow", backend="synthetic", options={"ttft_ms": 5, "itl_ms": 20}, max_running=1, max_queue=20
            ),
        ],
        tenants=[
            TenantConfig(name="alice", key=ALICE, models=["fast", "slow"], requests_per_minute=4),
            TenantConfig(name="bob", key=bob_hash, tokens_per_minute=100, max_concurrent=1),
            TenantConfig(name="batch", key=BATCH, priority="batch"),
        ],
        tenants_file=str(tenants_file),
        metrics_key="sk-metrics-9",
    )
    with serve(settings) as server:
        yield server


def test_every_model_route_needs_a_key(tenanted: RunningServer) -> None:
    base = tenanted.base_url
    for path, body in [
        ("/v1/completions", {"model": "fast", "prompt": "hi", "max_tokens": 1}),
        ("/tokenize", {"model": "fast", "prompt": "hi"}),
        ("/detokenize", {"model": "fast", "tokens": [104]}),
    ]:
        r = httpx.post(base + path, json=body)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(base + path, json=body, headers=auth("sk-not-a-key")).status_code == 401
        assert httpx.post(base + path, json=body, headers=auth(CAROL)).status_code == 200, path
    assert httpx.get(base + "/health").status_code == 200  # probes stay open
    # /metrics takes its own key, and no tenant's.
    assert httpx.get(base + "/metrics").status_code == 401
    assert httpx.get(base + "/metrics", headers=auth(CAROL)).status_code == 401
    assert httpx.get(base + "/metrics", headers=auth("sk-metrics-9")).status_code == 200


def test_a_key_sees_and_uses_only_its_models(tenanted: RunningServer) -> None:
    alice = openai.OpenAI(base_url=tenanted.v1, api_key=ALICE, max_retries=0)
    assert sorted(m.id for m in alice.models.list()) == ["fast", "slow"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        alice.completions.create(model="other", prompt="hi", max_tokens=1)
    assert denied.value.code == "model_not_allowed" and denied.value.body["param"] == "model"  # type: ignore[index]
    carol = openai.OpenAI(base_url=tenanted.v1, api_key=CAROL, max_retries=0)
    assert carol.completions.create(model="other", prompt="hi", max_tokens=1).choices


def test_requests_per_minute_with_openai_headers(tenanted: RunningServer) -> None:
    body = {"model": "fast", "prompt": "hi", "max_tokens": 1}
    with httpx.Client(base_url=tenanted.v1, headers=auth(ALICE)) as c:
        answers = [c.post("/completions", json=body) for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["3", "2", "1", "0", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "4" for r in answers)
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "requests_per_minute"
    assert 55 <= int(refused.headers["retry-after"]) <= 60  # when the first of the four leaves the window
    assert float(refused.headers["x-ratelimit-reset-requests"].rstrip("s")) > 55
    samples = scrape(tenanted.base_url, headers=auth("sk-metrics-9"))
    assert value(samples, "lightgate_tenant_refusals_total", tenant="alice", reason="requests_per_minute") == 1
    assert value(samples, "lightgate_tenant_requests_total", tenant="alice", model="fast", outcome="length") == 4
    assert value(samples, "lightgate_tenant_refusals_total", tenant="anonymous", reason="invalid_api_key") >= 1


def test_tokens_are_reserved_at_admission_and_refunded_at_the_end(tenanted: RunningServer) -> None:
    with httpx.Client(base_url=tenanted.v1, headers=auth(BOB)) as c:
        # 10 prompt tokens + max_tokens 50 reserved; 10 + 5 used (the stream stops at 5).
        r = c.post("/completions", json={"model": "fast", "prompt": "abcdefghij", "max_tokens": 50, "stop": "k"})
        assert r.status_code == 200
        used = r.json()["usage"]["total_tokens"]
        assert int(r.headers["x-ratelimit-limit-tokens"]) == 100
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 100 - used  # the unused part came back
        # A request bigger than the whole minute can never pass: 429 saying so, without Retry-After.
        big = c.post("/completions", json={"model": "fast", "prompt": "abcdefghij", "max_tokens": 200})
        assert big.status_code == 429 and "more than the 100 tokens per minute" in big.json()["error"]["message"]
        assert "retry-after" not in big.headers
        # One that fits the minute but not what is left now: 429 with the wait.
        left = int(big.headers["x-ratelimit-remaining-tokens"])
        r = c.post("/completions", json={"model": "fast", "prompt": "abcdefghij", "max_tokens": left - 5})
        assert r.status_code == 429 and r.json()["error"]["code"] == "tokens_per_minute"
        assert 1 <= int(r.headers["retry-after"]) <= 60


def test_concurrency_limit(tenanted: RunningServer) -> None:
    # A request the gateway turns away before the engine does not count as one in flight.
    unknown = httpx.post(tenanted.v1 + "/completions", json={"model": "nope", "prompt": "a"}, headers=auth(BOB))
    assert unknown.status_code == 404

    async def two_at_once() -> list[int]:
        async with httpx.AsyncClient(base_url=tenanted.v1, headers=auth(BOB), timeout=30) as c:
            first = asyncio.create_task(c.post("/completions", json={"model": "slow", "prompt": "a", "max_tokens": 3}))
            while tenanted.router.get("slow").admission.running < 1:
                await asyncio.sleep(0.005)
            second = await c.post("/completions", json={"model": "slow", "prompt": "a", "max_tokens": 3})
            return [(await first).status_code, second.status_code]

    assert asyncio.run(two_at_once()) == [200, 429]


def test_an_interactive_request_overtakes_queued_batch_work(tenanted: RunningServer) -> None:
    admission = tenanted.router.get("slow").admission

    async def scenario() -> list[str]:
        done: list[str] = []

        async def call(key: str, who: str) -> None:
            tokens = 15 if who == "batch" else 3  # batch work long enough that the standard one arrives meanwhile
            async with httpx.AsyncClient(base_url=tenanted.v1, headers=auth(key), timeout=60) as c:
                r = await c.post("/completions", json={"model": "slow", "prompt": "a", "max_tokens": tokens})
                assert r.status_code == 200
                done.append(who)

        tasks = [asyncio.create_task(call(BATCH, "batch")) for _ in range(5)]
        while admission.waiting < 4:
            await asyncio.sleep(0.005)
        tasks.append(asyncio.create_task(call(CAROL, "standard")))
        await asyncio.gather(*tasks)
        return done

    order = asyncio.run(scenario())
    assert order.index("standard") <= 1  # after the batch request already running, at most


def test_the_keys_file_is_reloaded_without_a_restart(tenanted: RunningServer, tenants_file: Path) -> None:
    new_key = "sk-dave-0005"
    body = {"model": "fast", "prompt": "hi", "max_tokens": 1}
    assert httpx.post(tenanted.v1 + "/completions", json=body, headers=auth(new_key)).status_code == 401
    tenants_file.write_text(yaml.safe_dump([{"name": "carol", "key": CAROL}, {"name": "dave", "key": new_key}]))
    os.utime(tenants_file, (time.time() + 5, time.time() + 5))  # a new mtime even within the clock's grain

    def dave_in() -> bool:
        return httpx.post(tenanted.v1 + "/completions", json=body, headers=auth(new_key)).status_code == 200

    assert wait_until(dave_in, timeout=10)


def test_sighup_reloads_the_keys(tmp_path: Path) -> None:
    keys = tmp_path / "tenants.yaml"
    keys.write_text(yaml.safe_dump([{"name": "one", "key": "sk-one-00001"}]))
    config = tmp_path / "lightgate.yaml"
    models = [{"name": "fast", "backend": "synthetic"}]
    config.write_text(yaml.safe_dump({"models": models, "tenants_file": str(keys), "access_log": False}))
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(base + "/ready").status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, timeout=60)
        body = {"model": "fast", "prompt": "hi", "max_tokens": 1}
        assert httpx.post(base + "/v1/completions", json=body, headers=auth("sk-two-00002")).status_code == 401
        mtime = keys.stat().st_mtime
        keys.write_text(yaml.safe_dump([{"name": "two", "key": "sk-two-00002"}]))
        os.utime(keys, (mtime, mtime))  # the same mtime: only the signal can tell it changed
        proc.send_signal(signal.SIGHUP)
        assert wait_until(
            lambda: httpx.post(base + "/v1/completions", json=body, headers=auth("sk-two-00002")).status_code == 200
        )
        assert httpx.post(base + "/v1/completions", json=body, headers=auth("sk-one-00001")).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
