"""The `openai` backend against real upstreams: Lightgate engine processes (SmolLM2 on
llama.cpp, and the synthetic backend where a failure must be provoked) on loopback
ports, behind a gateway, called with the official `openai` client."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.config import ModelConfig, Settings
from leanhttp.local import free_port
from tests.server import RunningServer, serve, wait_until

SMOL = "smollm2-135m"
KEY_ENV = "LIGHTGATE_TEST_UPSTREAM_KEY"


class EngineProcess:
    """`lightgate serve` in its own process: a replica that can be killed and restarted
    on the same port, as Kubernetes restarts a pod."""

    def __init__(self, tmp: Path, models: list[dict[str, Any]], **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / f"engine-{self.port}.yaml"
        self.config.write_text(yaml.safe_dump({"models": models, "access_log": False, **settings}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EngineProcess:
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the engine on port {self.port} did not start")
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def gauge(self, name: str) -> float:
        """The sum of a gauge's series on this replica's own /metrics."""
        text = httpx.get(self.url + "/metrics").text
        return sum(float(m) for m in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def smol_engine(tmp: Path) -> EngineProcess:
    model = {"name": SMOL, "backend": "llamacpp", "variant": "smollm2-135m-instruct-q4_1"}
    return EngineProcess(tmp, [{**model, "options": {"n_ctx": 512, "n_parallel": 4}}])


def upstream_model(name: str, urls: list[str], **options: Any) -> ModelConfig:
    return ModelConfig(
        name=name,
        backend="openai",
        options={"upstreams": urls, "upstream_model": SMOL, "health_interval_s": 0.5, **options},
    )


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EngineProcess]]:
    tmp = tmp_path_factory.mktemp("engines")
    started: list[EngineProcess] = []
    try:
        for _ in range(2):
            started.append(smol_engine(tmp).start())
        yield started
    finally:
        for e in started:
            e.stop()


@pytest.fixture(scope="module")
def synthetic_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """Synthetic models behind an API key: a slow first token, a mid-stream failure."""
    models = [
        {"name": "slow", "backend": "synthetic", "options": {"ttft_ms": 3000}},
        {"name": "failing", "backend": "synthetic", "options": {"fail_after_tokens": 3}},
    ]
    engine = EngineProcess(tmp_path_factory.mktemp("synthetic"), models, api_keys=["upstream-secret"])
    try:
        yield engine.start()
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def fleet(engines: list[EngineProcess], synthetic_engine: EngineProcess) -> Iterator[RunningServer]:
    urls = [e.url for e in engines]
    s = synthetic_engine.url
    os.environ[KEY_ENV] = "upstream-secret"
    settings = Settings(
        models=[
            upstream_model("least", urls),
            upstream_model("rr", urls, routing="round_robin"),
            upstream_model("affinity", urls, routing="prefix_affinity"),
            upstream_model("dns", [f"http://localhost:{engines[0].port}"], resolve_dns=True),
            ModelConfig(name="direct-name", backend="openai", options={"upstreams": [engines[0].url]}),
            upstream_model("slow", [s], upstream_model="slow", api_key_env=KEY_ENV, first_token_timeout_s=0.5),
            upstream_model("failing", [s], upstream_model="failing", api_key_env=KEY_ENV),
            upstream_model("no-key", [s], upstream_model="failing"),
            upstream_model("down", [f"http://127.0.0.1:{free_port()}"]),
        ]
    )
    with serve(settings) as server:
        yield server


def client_of(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def attempts(server: RunningServer, model: str) -> list[int]:
    stats = server.router.get(model).backend.stats()
    assert stats.upstreams is not None
    return [u.requests for u in stats.upstreams]


def metric(server: RunningServer, name: str, model: str, upstream: str) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    found = re.search(rf'^{name}{{[^}}]*model="{model}"[^}}]*upstream="{upstream}"[^}}]*}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else float("nan")


def test_answers_are_the_upstreams_own(fleet: RunningServer, engines: list[EngineProcess]) -> None:
    gateway = client_of(fleet)
    direct = openai.OpenAI(base_url=engines[0].url + "/v1", api_key="unused", max_retries=0)
    ask = {"prompt": "The three primary colors are", "max_tokens": 24, "temperature": 0}
    expected = direct.completions.create(model=SMOL, **ask)  # type: ignore[call-overload]
    got = gateway.completions.create(model="least", **ask)  # type: ignore[call-overload]
    assert got.choices[0].text == expected.choices[0].text
    assert got.model == "least"  # renamed back to the name the client used
    assert got.usage is not None and got.usage.completion_tokens == 24
    streamed = gateway.completions.create(model="least", stream=True, **ask)  # type: ignore[call-overload]
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.choices[0].text
    assert all(c.usage is None for c in chunks)  # the usage the gateway asked for is not passed on
    with_usage = gateway.chat.completions.create(
        model="rr",
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(with_usage)[-1]
    assert last.usage is not None and last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    # No upstream_model: the client's name goes upstream unchanged (the engine serves it as smollm2-135m).
    with pytest.raises(openai.NotFoundError, match="direct-name"):
        gateway.completions.create(model="direct-name", prompt="Hi", max_tokens=2)
    counted = httpx.post(fleet.base_url + "/tokenize", json={"model": "least", "prompt": "Hello world"}).json()
    assert counted["count"] == len(counted["tokens"]) > 0 and counted["max_model_len"] == 512


def test_least_outstanding_spreads_concurrent_requests(fleet: RunningServer) -> None:
    before = attempts(fleet, "least")
    client = client_of(fleet)

    def one() -> None:
        stream = client.completions.create(model="least", prompt="Once upon a time", max_tokens=24, stream=True)
        assert list(stream)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spread = [a - b for a, b in zip(attempts(fleet, "least"), before, strict=True)]
    assert sum(spread) == 8 and max(spread) - min(spread) <= 2, spread


def test_round_robin_alternates(fleet: RunningServer) -> None:
    client = client_of(fleet)
    seen = []
    for _ in range(4):
        before = attempts(fleet, "rr")
        client.completions.create(model="rr", prompt="Hi", max_tokens=2)
        after = attempts(fleet, "rr")
        seen.append([a - b for a, b in zip(after, before, strict=True)].index(1))
    assert seen in ([0, 1, 0, 1], [1, 0, 1, 0])


def test_prefix_affinity_keeps_a_prefix_on_one_replica(fleet: RunningServer) -> None:
    client = client_of(fleet)
    system = "You are a careful assistant who answers in one short sentence. " * 5
    before = attempts(fleet, "affinity")
    for question in ("What is rain?", "What is snow?", "What is hail?", "What is fog?"):
        client.completions.create(model="affinity", prompt=system + question, max_tokens=2)
    shared = [a - b for a, b in zip(attempts(fleet, "affinity"), before, strict=True)]
    assert sorted(shared) == [0, 4]  # all four on the replica that holds the prefix
    before = attempts(fleet, "affinity")
    for i in range(12):
        client.completions.create(model="affinity", prompt=f"Topic {i}: tell me about number {i}", max_tokens=2)
    varied = [a - b for a, b in zip(attempts(fleet, "affinity"), before, strict=True)]
    assert min(varied) > 0, varied  # different prefixes use both


def test_dns_name_resolves_to_replicas(fleet: RunningServer, engines: list[EngineProcess]) -> None:
    stats = fleet.router.get("dns").backend.stats()
    assert stats.upstreams is not None
    urls = {u.url: u.available for u in stats.upstreams}
    assert urls.get(engines[0].url) is True  # localhost's IPv4 address; an IPv6 one, if any, fails its probe
    out = client_of(fleet).completions.create(model="dns", prompt="Hi", max_tokens=3)
    assert out.usage is not None and out.usage.completion_tokens == 3


def test_client_disconnect_stops_the_upstream(fleet: RunningServer, engines: list[EngineProcess]) -> None:
    body = {"model": "least", "prompt": "Count:", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", fleet.base_url + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert sum(e.gauge("lightgate_requests_running") for e in engines) == 1
    # The gateway closed the upstream stream; the engine freed its slot long before 400 tokens.
    assert wait_until(lambda: sum(e.gauge("lightgate_requests_running") for e in engines) == 0, timeout=5)
    stats = fleet.router.get("least").backend.stats()
    assert stats.running == 0 and fleet.router.get("least").admission.running == 0


def test_upstream_errors_reach_the_client(fleet: RunningServer) -> None:
    client = client_of(fleet)
    with pytest.raises(openai.BadRequestError, match="context"):  # the engine's own 400, relayed
        client.completions.create(model="least", prompt="Hi", max_tokens=5000)
    with pytest.raises(openai.AuthenticationError):  # the upstream wants a key this model does not send
        client.completions.create(model="no-key", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.APIStatusError) as late:  # no first token within first_token_timeout_s
        client.completions.create(model="slow", prompt="Hi", max_tokens=2, stream=True)
    assert late.value.status_code in (502, 504) and "timed out" in str(late.value)
    with pytest.raises(openai.APIError, match="failed"):  # an error event inside a stream that had begun
        for _ in client.completions.create(model="failing", prompt="Hi", max_tokens=10, stream=True):
            pass
    with pytest.raises(openai.APIStatusError) as down:
        client.completions.create(model="down", prompt="Hi", max_tokens=2)
    assert down.value.status_code == 503 and "no healthy upstream" in str(down.value)


def test_upstream_series_on_metrics(fleet: RunningServer, engines: list[EngineProcess]) -> None:
    text = httpx.get(fleet.base_url + "/metrics").text
    for e in engines:
        assert re.search(
            rf'lightgate_upstream_available{{[^}}]*model="least"[^}}]*upstream="{e.url}"[^}}]*}} 1.0', text
        )
        assert re.search(
            rf'lightgate_upstream_requests_total{{[^}}]*model="least"[^}}]*upstream="{e.url}"[^}}]*}} [1-9]', text
        )
    assert re.search(r'lightgate_upstream_available{[^}]*model="down"[^}]*} 0.0', text)


# -- a replica dies under load, and comes back ----------------------------------------------------


def test_replica_killed_mid_load(tmp_path: Path) -> None:
    a, c = smol_engine(tmp_path).start(), smol_engine(tmp_path).start()
    settings = Settings(
        models=[upstream_model("ha", [a.url, c.url], eject_after_failures=1, ejection_s=1.0, health_interval_s=0.3)]
    )
    results: list[tuple[str, int, str]] = []  # (phase, chunks received, error)
    try:
        with serve(settings) as gateway:
            client = client_of(gateway)

            def one(phase: str) -> None:
                got = 0
                try:
                    for chunk in client.completions.create(
                        model="ha",
                        prompt="Write a long story:",
                        max_tokens=64,
                        stream=True,
                        extra_body={"ignore_eos": True},
                    ):
                        got += bool(chunk.choices and chunk.choices[0].text)
                    results.append((phase, got, ""))
                except openai.APIError as exc:
                    results.append((phase, got, str(exc)))

            before = [threading.Thread(target=one, args=("before",)) for _ in range(6)]
            for t in before:
                t.start()
            assert wait_until(lambda: c.gauge("lightgate_requests_running") >= 2, timeout=20)
            c.kill()
            after = [threading.Thread(target=one, args=("after",)) for _ in range(6)]
            for t in after:
                t.start()
            for t in before + after:
                t.join()
            assert len(results) == 12
            # Nothing that had not yet streamed failed: the failures are streams cut after their first token.
            for phase, got, error in results:
                if error:
                    assert phase == "before" and got > 0, (phase, got, error)
            assert all(not error for phase, _, error in results if phase == "after")
            assert metric(gateway, "lightgate_upstream_available", "ha", c.url) == 0.0
            assert metric(gateway, "lightgate_upstream_ejections_total", "ha", c.url) >= 1

            c.start()  # the pod restarts on the same address
            assert wait_until(lambda: metric(gateway, "lightgate_upstream_available", "ha", c.url) == 1.0, 10)
            served = metric(gateway, "lightgate_upstream_requests_total", "ha", c.url)
            for _ in range(4):
                client.completions.create(model="ha", prompt="Hi", max_tokens=2)
            assert metric(gateway, "lightgate_upstream_requests_total", "ha", c.url) > served
    finally:
        a.stop()
        c.stop()


# -- drain on SIGTERM -----------------------------------------------------------------------------


def test_sigterm_drains_streams_and_refuses_new_work(tmp_path: Path) -> None:
    gateway = EngineProcess(
        tmp_path,
        [{"name": "timed", "backend": "synthetic", "options": {"itl_ms": 40, "output_tokens": 40}}],
        drain_timeout_s=20,
    ).start()
    assert gateway.proc is not None
    body = {"model": "timed", "prompt": "Hi", "max_tokens": 40, "stream": True}
    received: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", gateway.url + "/v1/completions", json=body, timeout=30) as response:
            received.extend(line for line in response.iter_lines() if line.startswith("data:"))

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(0.4)  # the stream is under way
    gateway.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(gateway.url + "/ready")
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert ready.json()["models"] == {"timed": "draining"}  # the model's own state says so too
    refused = httpx.post(gateway.url + "/v1/completions", json={**body, "stream": False})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    assert gateway.proc.poll() is None  # still up while the stream runs
    reader.join(timeout=30)
    assert received[-1] == "data: [DONE]" and len(received) == 41  # every token, then [DONE]
    assert gateway.proc.wait(timeout=15) == 0  # and then it exits, cleanly
