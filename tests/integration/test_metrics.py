"""GET /metrics on a real gateway: every series the dashboard reads, counted right
(one histogram observation per request, one per token where that is the unit),
outcomes told apart, engine numbers taken from the backends' own stats(), and
the exposition clean by promtool's lint. Also the request id and the access log."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import ModelConfig, Settings
from gateway.gpu import GpuCollector
from tests.conftest import FAILING, FAST, SLOW, SMOL
from tests.metrics_util import delta, scrape, value
from tests.server import RunningServer, serve, wait_until

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"

HISTOGRAMS = [
    "lightgate_time_to_first_token_seconds",
    "lightgate_inter_token_latency_seconds",
    "lightgate_time_per_output_token_seconds",
    "lightgate_e2e_request_latency_seconds",
    "lightgate_request_queue_time_seconds",
    "lightgate_request_prompt_tokens",
    "lightgate_request_generation_tokens",
]


def test_every_series_is_there_with_model_backend_variant_and_task_labels(
    gateway: RunningServer, client: openai.OpenAI
) -> None:
    client.completions.create(model=FAST, prompt="hello", max_tokens=3)
    samples = scrape(gateway.base_url)
    names = {name for name, _ in samples}
    for h in HISTOGRAMS:
        assert {h + "_bucket", h + "_count", h + "_sum"} <= names, h
    for name in [
        "lightgate_requests_total",
        "lightgate_prompt_tokens_total",
        "lightgate_generation_tokens_total",
        "lightgate_requests_running",
        "lightgate_requests_waiting",
        "lightgate_model_ready",
        "lightgate_model_loaded",
        "lightgate_model_load_seconds_count",
        "lightgate_model_unloads_total",
        "lightgate_engine_restarts_total",
        "lightgate_memory_budget_used_bytes",
        "lightgate_model_weight_bytes",
        "lightgate_model_running_memory_bytes",
        "lightgate_kv_cache_usage_ratio",
        "process_resident_memory_bytes",
    ]:
        assert name in names, name
    allowed = {"model", "backend", "variant", "task", "outcome", "le", "gpu", "name", "reason"}
    for name, labels in samples:
        if name.startswith("lightgate_tenant_"):  # usage per API key: by tenant, not by engine
            assert {k for k, _ in labels} <= {"tenant", "model", "outcome", "reason"}, name
        elif name.startswith("lightgate_memory_budget_"):  # the gateway's budget: one series, no model
            assert not labels, name
        elif name.startswith("lightgate_") and not name.startswith("lightgate_gpu_"):
            keys = {k for k, _ in labels}
            assert {"model", "backend", "variant", "task"} <= keys <= allowed, (name, keys)
    assert value(samples, "lightgate_model_ready", model=SMOL, backend="llamacpp") == 1
    assert value(samples, "lightgate_model_ready", variant="smollm2-135m-instruct-q4_1") == 1


def test_histogram_counts_match_the_requests_made(gateway: RunningServer, client: openai.OpenAI) -> None:
    before = scrape(gateway.base_url)
    for i in range(6):
        if i % 2:
            list(client.completions.create(model=FAST, prompt=f"count {i}", max_tokens=4, stream=True))
        else:
            client.chat.completions.create(model=FAST, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    after = scrape(gateway.base_url)
    per_request = [h + "_count" for h in HISTOGRAMS if h != "lightgate_inter_token_latency_seconds"]
    for name in per_request:
        assert delta(before, after, name, model=FAST) == 6, name
    assert delta(before, after, "lightgate_inter_token_latency_seconds_count", model=FAST) == 6 * 3
    assert delta(before, after, "lightgate_generation_tokens_total", model=FAST) == 6 * 4
    assert delta(before, after, "lightgate_request_generation_tokens_sum", model=FAST) == 6 * 4
    assert delta(before, after, "lightgate_requests_total", model=FAST, outcome="length") == 6
    assert delta(before, after, "lightgate_requests_total", model=FAST) == 6
    # Prompt tokens as the engine got them: the usage the client saw, summed.
    usage = client.completions.create(model=FAST, prompt="four", max_tokens=1).usage
    assert usage is not None
    last = scrape(gateway.base_url)
    assert delta(after, last, "lightgate_prompt_tokens_total", model=FAST) == usage.prompt_tokens


def test_outcomes_are_told_apart(gateway: RunningServer, client: openai.OpenAI) -> None:
    before = scrape(gateway.base_url)
    # client_error: a token id outside the vocabulary, found after the model was chosen
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=FAST, prompt="x", max_tokens=2, logit_bias={"999999": 1})
    # server_error: the engine fails, before the response starts and inside a stream
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model=FAILING, prompt="x", max_tokens=10)
    with pytest.raises(openai.APIError):
        list(client.completions.create(model=FAILING, prompt="x", max_tokens=10, stream=True))
    # aborted: the client leaves a stream half-way
    with httpx.stream(
        "POST",
        gateway.v1 + "/completions",
        json={"model": SLOW, "prompt": "x", "max_tokens": 200, "stream": True},
    ) as r:
        next(r.iter_lines())
    assert wait_until(lambda: delta(before, scrape(gateway.base_url), "lightgate_requests_total", outcome="aborted"))
    # rejected: more at once than one slot and one queue place
    with httpx.Client(timeout=30) as h:
        import concurrent.futures

        body = {"model": SLOW, "prompt": "x", "max_tokens": 5}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: h.post(gateway.v1 + "/completions", json=body).status_code, range(4)))
    after = scrape(gateway.base_url)
    assert delta(before, after, "lightgate_requests_total", model=FAST, outcome="client_error") == 1
    assert delta(before, after, "lightgate_requests_total", model=FAILING, outcome="server_error") == 2
    assert delta(before, after, "lightgate_requests_total", model=SLOW, outcome="aborted") == 1
    assert delta(before, after, "lightgate_requests_total", model=SLOW, outcome="rejected") == statuses.count(429)
    assert statuses.count(429) >= 1
    assert delta(before, after, "lightgate_requests_total", model=SLOW, outcome="length") == statuses.count(200)


def test_engine_gauges_come_from_the_backends_own_stats(gateway: RunningServer, client: openai.OpenAI) -> None:
    client.completions.create(model=SMOL, prompt="Hi", max_tokens=2)
    samples = scrape(gateway.base_url)
    smol = next(d for d in gateway.router.deployments if d.name == SMOL)
    stats = smol.backend.stats()
    assert stats.weight_bytes and stats.running_memory_bytes
    assert value(samples, "lightgate_model_weight_bytes", model=SMOL) == stats.weight_bytes
    assert value(samples, "lightgate_model_running_memory_bytes", model=SMOL) >= stats.weight_bytes
    assert any(n == "lightgate_kv_cache_usage_ratio" and ("model", SMOL) in ls for n, ls in samples)
    # The synthetic backend has no KV cache and reports none: the series is absent, not zero.
    assert not any(n == "lightgate_kv_cache_usage_ratio" and ("model", FAST) in ls for n, ls in samples)


def test_prefix_cache_hits_count_the_prompt_tokens_reused(gateway: RunningServer, client: openai.OpenAI) -> None:
    """vLLM's prefix_cache_queries and _hits: tokens, not requests."""
    prompt = "A library opens at nine and closes at six; visitors may borrow five books. " * 4
    client.completions.create(model=SMOL, prompt=prompt + "Hours?", max_tokens=1)
    before = scrape(gateway.base_url)
    usage = client.completions.create(model=SMOL, prompt=prompt + "Books?", max_tokens=1).usage
    after = scrape(gateway.base_url)
    assert usage is not None
    assert delta(before, after, "lightgate_prefix_cache_queries_total", model=SMOL) == usage.prompt_tokens
    hits = delta(before, after, "lightgate_prefix_cache_hits_total", model=SMOL)
    assert usage.prompt_tokens - 8 < hits < usage.prompt_tokens  # all but the new question's tokens
    assert not any(n.startswith("lightgate_prefix_cache") and ("model", FAST) in ls for n, ls in after)


def test_gpu_memory_is_absent_without_a_gpu(gateway: RunningServer) -> None:
    body = httpx.get(gateway.base_url + "/metrics").text
    has_gpu = GpuCollector.create() is not None
    assert ("lightgate_gpu_memory_used_bytes" in body) == has_gpu
    assert ("lightgate_gpu_memory_total_bytes" in body) == has_gpu


def test_promtool_finds_nothing_to_lint_in_a_live_exposition(gateway: RunningServer, client: openai.OpenAI) -> None:
    client.completions.create(model=FAST, prompt="lint", max_tokens=2)
    body = httpx.get(gateway.base_url + "/metrics")
    assert body.headers["content-type"].startswith("text/plain; version=0.0.4")
    run = subprocess.run(["promtool", "check", "metrics"], input=body.text, capture_output=True, text=True)
    assert run.returncode == 0 and not run.stdout.strip() and not run.stderr.strip(), run.stdout + run.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    run = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 4 rules found" in run.stdout


def test_request_id_is_taken_from_the_client_or_made(gateway: RunningServer) -> None:
    body = {"model": FAST, "prompt": "id", "max_tokens": 1}
    given = httpx.post(gateway.v1 + "/completions", json=body, headers={"x-request-id": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    made = httpx.post(gateway.v1 + "/completions", json=body)
    assert len(made.headers["x-request-id"]) == 32
    unsafe = httpx.post(gateway.v1 + "/completions", json=body, headers={"x-request-id": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    missing = httpx.get(gateway.base_url + "/nowhere", headers={"x-request-id": "r-404"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-404"


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "lightgate.access"]


def test_access_log_has_one_json_line_per_request_without_prompts(
    gateway: RunningServer, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lightgate.access")
    secret = "my private prompt"
    client.with_options(default_headers={"x-request-id": "log-1"}).completions.create(
        model=FAST, prompt=secret, max_tokens=3
    )
    assert wait_until(lambda: any(e["request_id"] == "log-1" for e in _access_lines(caplog)))
    entry = next(e for e in _access_lines(caplog) if e["request_id"] == "log-1")
    assert entry["model"] == FAST and entry["backend"] == "synthetic" and entry["status"] == 200
    assert entry["outcome"] == "length" and entry["output_tokens"] == 3 and entry["prompt_tokens"] == len(secret)
    assert entry["path"] == "/v1/completions" and entry["method"] == "POST"
    assert isinstance(entry["ttft_s"], float) and isinstance(entry["e2e_s"], float)
    assert entry["e2e_s"] >= entry["ttft_s"]
    assert secret not in json.dumps(entry) and "prompt" not in entry and "output" not in entry


def test_prompts_and_outputs_are_logged_only_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightgate.access")
    settings = Settings(models=[ModelConfig(name="echo", backend="synthetic")], log_prompts=True)
    with serve(settings) as server:
        r = httpx.post(
            server.v1 + "/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "tell me"}], "max_tokens": 4},
            headers={"x-request-id": "log-2"},
        )
        assert r.status_code == 200
        assert wait_until(lambda: any(e["request_id"] == "log-2" for e in _access_lines(caplog)))
    entry = next(e for e in _access_lines(caplog) if e["request_id"] == "log-2")
    assert entry["prompt"] == [{"role": "user", "content": "tell me"}]
    assert entry["output"] == r.json()["choices"][0]["message"]["content"]


def test_metrics_can_be_switched_off() -> None:
    settings = Settings(models=[ModelConfig(name="plain", backend="synthetic")], metrics=False)
    with serve(settings) as server:
        assert httpx.get(server.base_url + "/metrics").status_code == 404
        r = httpx.post(server.v1 + "/completions", json={"model": "plain", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200 and "x-request-id" in r.headers
