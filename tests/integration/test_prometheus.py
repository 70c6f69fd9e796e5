"""A real Prometheus scrapes a real gateway under a short real load; then every
PromQL expression of every panel of the Grafana dashboard, with its variables
filled in as Grafana would, must return data through Prometheus' HTTP API, and
every alert rule must evaluate. (No Grafana server installs here; the dashboard's
queries are what can go wrong, and those run for real.)"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.gpu import GpuCollector
from tests.conftest import FAILING, FAST, SLOW, SMOL
from tests.metrics_util import scrape, value
from tests.server import RunningServer

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "lightgate.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
SCRAPE_S = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(gateway: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prometheus")
    target = gateway.base_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "lightgate", "static_configs": [{"targets": [target]}]}],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(home / "prometheus.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _ready(base):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prometheus did not start: " + (home / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/-/ready").status_code == 200
    except httpx.HTTPError:
        return False


def query(base: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(base + "/api/v1/query", params={"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _load(client: openai.OpenAI, gateway: RunningServer) -> None:
    """A little of everything: the real model and the synthetic ones, streams, chat,
    an engine failure, and a burst past a queue."""
    for i in range(3):
        client.completions.create(model=SMOL, prompt=f"Count to {i + 3}:", max_tokens=8)
        list(client.completions.create(model=SMOL, prompt="Once upon a time", max_tokens=8, stream=True))
        client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6)
        client.completions.create(model=FAST, prompt="x" * (i + 1), max_tokens=16)
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model=FAILING, prompt="x", max_tokens=10)
    import concurrent.futures

    body = {"model": SLOW, "prompt": "x", "max_tokens": 5}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: httpx.post(gateway.v1 + "/completions", json=body, timeout=30), range(4)))


def _panel_queries() -> list[tuple[str, str, str]]:
    """(row, panel title, expression) for every target, variables filled in as
    Grafana does with the model variable on "All"."""
    dashboard = json.loads(DASHBOARD.read_text())
    model_var = next(v for v in dashboard["templating"]["list"] if v["name"] == "model")
    out, row = [], ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            expr = target["expr"].replace("$model", model_var["allValue"]).replace("$__rate_interval", "1m")
            out.append((row, panel["title"], expr))
    return out


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    prometheus: str, gateway: RunningServer, client: openai.OpenAI
) -> None:
    deadline = time.monotonic() + 30
    while not query(prometheus, 'up{job="lightgate"} == 1'):
        assert time.monotonic() < deadline, "prometheus never scraped the gateway"
        time.sleep(0.2)
    time.sleep(SCRAPE_S * 2)  # samples before the load, so that rates have a start
    _load(client, gateway)
    # Wait until Prometheus holds the counters as they are now, plus one more scrape.
    total = value(scrape(gateway.base_url), "lightgate_requests_total")
    deadline = time.monotonic() + 30
    while True:
        got = query(prometheus, "sum(lightgate_requests_total)")
        if got and float(got[0]["value"][1]) >= total:
            break
        assert time.monotonic() < deadline, "prometheus never caught up with the load"
        time.sleep(0.2)
    time.sleep(SCRAPE_S * 2)

    has_gpu = GpuCollector.create() is not None
    queries = _panel_queries()
    assert len(queries) >= 30
    empty = []
    for row, title, expr in queries:
        result = query(prometheus, expr)
        if row == "Speculative decoding":
            assert result == [], f"{title}: no speculative model is served, yet {result}"
        elif "lightgate_gpu_" in expr and not has_gpu:
            assert result == [], f"{title}: no GPU here, yet {result}"
        elif not result:
            empty.append(f"{row} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # The model variable's own query lists the served models.
    r = httpx.get(prometheus + "/api/v1/label/model/values", params={"match[]": "lightgate_model_ready"})
    assert {SMOL, FAST, SLOW, FAILING} <= set(r.json()["data"])


def test_every_alert_rule_evaluates_on_live_data(prometheus: str) -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    for rule in rules:
        query(prometheus, rule["expr"])  # parses and runs; none should fire on a healthy gateway
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(prometheus + "/api/v1/rules").json()["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        if len(loaded) == len(rules) and all(r["health"] == "ok" for r in loaded):
            break
        assert time.monotonic() < deadline, loaded
        time.sleep(0.5)
    firing = httpx.get(prometheus + "/api/v1/alerts").json()["data"]["alerts"]
    assert not [a for a in firing if a["state"] == "firing"]
