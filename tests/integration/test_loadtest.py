"""The load tester measures itself: against the synthetic backend with a configured
time to first token and inter-token delay (a gateway in its own process), the
figures it reports match the configured ones at low and high concurrency; an open
loop keeps its clock; a failing server stops a run on the error ratio; and
`lightgate bench run` works end to end against the real SmolLM2 model."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from compressed_models import results
from gateway.cli import main as lightgate
from leanhttp.client import Client
from loadtest.client import RequestSpec
from loadtest.compare import Target
from loadtest.prompts import fixed, of_token_lengths, token_lengths, wikitext
from loadtest.shapes import ClosedLoop, OpenLoop, Stop, run
from loadtest.stats import summarize
from tests.conftest import FAST, SMOL
from tests.metrics_util import delta, scrape
from tests.server import RunningServer, serve_process

ROOT = Path(__file__).resolve().parents[2]
TTFT_MS, ITL_MS = 50.0, 10.0


# WikiText-2's layout (headings between " = " marks, one paragraph a line, tokens
# spaced), written here so the tests do not depend on where ../shared/data lives.
_SENTENCES = [
    "Robert Boulter is an English film , television and theatre actor .",
    "He had a guest starring role on the television series The Bill in 2000 .",
    "This was followed by a starring role in the play Herons written by Simon Stephens .",
    "It was performed in 2001 at the Royal Court Theatre .",
    "He had a guest role in the television series Judge John Deed in 2002 .",
    "In 2004 Boulter landed a role as Craig in the episode Teddy 's Story .",
]


@pytest.fixture(scope="module")
def wiki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = []
    for i in range(60):
        lines += [f" = Section {i} = ", "", " " + " ".join(_SENTENCES[i % 6 :] + _SENTENCES[: i % 6]), ""]
    path = tmp_path_factory.mktemp("wikitext") / "wiki.test.raw"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models: list[dict[str, object]] = [
        {"name": "timed", "backend": "synthetic", "options": {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS}},
        {"name": "broken", "backend": "synthetic", "options": {"fail_after_tokens": 2}},
    ]
    with serve_process(models, tmp_path_factory.mktemp("loadtest")) as base:
        yield base


@pytest.mark.parametrize("users", [1, 32])
def test_measured_latencies_match_the_configured_ones(synthetic: str, users: int) -> None:
    spec = RequestSpec("timed", max_tokens=32)
    # Users start spread over one request's duration (~360 ms), as Locust's spawn rate
    # spreads them: 32 users in lockstep would measure the burst, not the tester.
    shape = ClosedLoop(users, spawn_rate=users / 0.36)
    requests = 4 * users + 4
    before = scrape(synthetic)
    result = asyncio.run(run(synthetic, spec, fixed("hello"), shape, Stop(requests=requests)))
    after = scrape(synthetic)
    s = summarize(result)
    assert s.failed == 0 and s.requests == requests
    assert s.ttft is not None and s.itl is not None and s.tpot is not None
    # Tokens follow the configured spacing to within a millisecond.
    assert s.itl.median * 1000 == pytest.approx(ITL_MS, abs=1.0), s.itl
    assert s.tpot.median * 1000 == pytest.approx(ITL_MS, abs=1.0), s.tpot
    # The first token: the configured delay plus what the gateway adds, which it times
    # itself from a request's arrival; on top of that only loopback HTTP both ways and
    # the tester's parsing (3-7 ms on this 2-core machine, which drifts).
    count = delta(before, after, "lightgate_time_to_first_token_seconds_count", model="timed")
    server_ttft = delta(before, after, "lightgate_time_to_first_token_seconds_sum", model="timed") / count
    assert count == requests and server_ttft >= TTFT_MS / 1000
    # Each request's client TTFT contains its server TTFT, so the means keep that order
    # exactly; the median is the robust bound on the overhead (the server's histogram
    # gives only a mean, and one slow request moves a mean of 8 but not a median).
    assert s.ttft.mean >= server_ttft, (s.ttft, server_ttft)
    assert (s.ttft.median - server_ttft) * 1000 <= 10, (s.ttft, server_ttft)
    assert all(r.tokens == 32 and r.prompt_tokens == 5 for r in result.records)  # usage read back


def test_chat_requests_are_timed_the_same_way(synthetic: str) -> None:
    spec = RequestSpec("timed", api="chat", max_tokens=8)
    before = scrape(synthetic)
    s = summarize(asyncio.run(run(synthetic, spec, fixed("hi"), ClosedLoop(2), Stop(requests=8))))
    after = scrape(synthetic)
    assert s.failed == 0 and s.ttft is not None and s.itl is not None
    count = delta(before, after, "lightgate_time_to_first_token_seconds_count", model="timed")
    server_ttft = delta(before, after, "lightgate_time_to_first_token_seconds_sum", model="timed") / count
    assert 0 <= (s.ttft.median - server_ttft) * 1000 <= 10, (s.ttft, server_ttft)
    assert s.itl.median * 1000 == pytest.approx(ITL_MS, abs=1.0), s.itl


async def _bare_ttfts(base: str, count: int) -> list[float]:
    """Time to the first data line with the plainest client on the tester's own HTTP
    client (leanhttp/client.py): the reference, so the difference is the tester's own work."""
    body = json.dumps({"model": "timed", "prompt": "hello", "max_tokens": 4, "stream": True}).encode()
    out: list[float] = []
    client = Client(base)
    for i in range(count + 1):  # the first opens the connection and is not kept
        first: list[float] = []

        def on_chunk(data: bytes, arrived: float, first: list[float] = first) -> None:
            if not first and b"data: {" in data:
                first.append(arrived)

        start = time.perf_counter()
        assert (await client.post("/v1/completions", body, on_chunk))[0] == 200
        if i:
            out.append(first[0] - start)
    client.close()
    return out


def test_the_tester_adds_nothing_over_a_bare_http_client(synthetic: str) -> None:
    """Alternating with a bare client on the same server, one request at a
    time, the tester's TTFT is the bare client's to within a millisecond and a half."""
    spec = RequestSpec("timed", max_tokens=4)
    tester: list[float] = []
    bare: list[float] = []
    for _ in range(8):
        result = asyncio.run(run(synthetic, spec, fixed("hello"), ClosedLoop(1), Stop(requests=2)))
        second = result.records[1].ttft  # its connection already open, as the bare client's is
        assert second is not None
        tester.append(second)
        bare += asyncio.run(_bare_ttfts(synthetic, 1))
    assert abs(statistics.median(tester) - statistics.median(bare)) * 1000 <= 1.5, (tester, bare)


def test_an_open_loop_keeps_its_own_clock(synthetic: str) -> None:
    spec = RequestSpec("timed", max_tokens=16)  # each takes ~200 ms: many overlap at 50 req/s
    shape = OpenLoop(rate=50.0, distribution="constant")
    result = asyncio.run(run(synthetic, spec, fixed("tick"), shape, Stop(requests=40)))
    starts = [r.start for r in result.records]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(result.records) == 40 and all(r.ok for r in result.records)
    assert sum(gaps) / len(gaps) == pytest.approx(0.020, abs=0.002)
    assert max(r.end for r in result.records[:10]) > starts[10]  # did not wait for earlier requests


def test_a_failing_server_stops_the_run_on_its_error_ratio(synthetic: str) -> None:
    spec = RequestSpec("broken", max_tokens=16)
    result = asyncio.run(
        run(synthetic, spec, fixed("x"), ClosedLoop(2), Stop(requests=200, max_error_ratio=0.5))
    )  # fmt: skip
    assert result.stopped_by == "error ratio above 0.5"
    assert 10 <= len(result.records) < 20
    assert all(not r.ok and r.error and "in-stream error" in r.error for r in result.records)


def test_bench_run_end_to_end_on_the_real_model(gateway: RunningServer, tmp_path: Path, wiki: Path) -> None:
    out = tmp_path / "run"
    args = ["bench", "run", "--base-url", gateway.base_url, "--model", SMOL, "--users", "2", "--requests", "4"]
    args += ["--max-tokens", "12", "--wikitext", str(wiki), "--prompt-tokens", "24,4"]
    args += ["--slo", "ttft=10s,itl=5s", "--out", str(out)]
    assert lightgate(args) == 0
    run_json = json.loads((out / "run.json").read_text())
    assert len(run_json["requests"]) == 4 and all(r["ok"] for r in run_json["requests"])
    assert all(r["output_tokens"] == 12 for r in run_json["requests"])
    assert all(abs(r["prompt_tokens"] - 24) <= 13 for r in run_json["requests"])  # 24 tokens, stdev 4
    summary = run_json["summary"]
    assert summary["goodput"] == pytest.approx(summary["request_rate"])  # generous SLOs: every request met them
    server = summary["server"]
    smol = next(d for d in gateway.router.deployments if d.name == SMOL)
    assert server["weight_bytes"] == smol.backend.stats().weight_bytes
    assert server["server_generation_tokens"] >= 4 * 12  # the server counted at least what we received
    with (out / "stats.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["Type"] for r in rows] == ["POST", "TTFT", "ITL", ""]
    assert rows[0]["Request Count"] == "4" and rows[2]["Request Count"] == str(4 * 11)
    assert "| output tokens/s |" in (out / "summary.md").read_text()
    assert (out / "report.html").read_text().count("<img") == 2  # latency CDFs, the run over time


def test_wikitext_prompts_are_passages_of_the_asked_length(wiki: Path) -> None:
    source = wikitext(40, wiki, seed=3, count=20)
    lengths = {len(p.text.split()) for p in source.prompts}
    assert lengths == {40} and len(source.prompts) == 20
    assert source.get(0) == wikitext(40, wiki, seed=3, count=20).get(0)  # same seed, same requests
    assert all(p.text.split()[0][0].isupper() for p in source.prompts)  # each starts a sentence
    assert not any("=" in p.text for p in source.prompts)  # headings left out


def test_bench_compare_writes_a_table_in_the_shape_of_table_3(
    gateway: RunningServer, tmp_path: Path, wiki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGHTGATE_CACHE", str(tmp_path / "cache"))
    for tokens, ppl in ((100, 30.0), (5000, 23.5)):  # the result over the most tokens is shown
        results.save(
            "smollm2-135m-instruct-q4_1", {"protocol": "llamacpp", "n_ctx": tokens, "tokens": tokens, "ppl": ppl}
        )
    out = tmp_path / "compare"
    args = ["bench", "compare", "--base-url", gateway.base_url, "--target", f"q4_1={SMOL}", "--target", FAST]
    args += ["--concurrency", "2", "--requests", "4", "--single-requests", "2", "--max-tokens", "8"]
    args += ["--wikitext", str(wiki), "--wikitext-words", "16", "--out", str(out)]
    assert lightgate(args) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["q4_1", FAST]
    assert [r["engine"] for r in rows] == ["llamacpp", "synthetic"]
    smol = next(d for d in gateway.router.deployments if d.name == SMOL)
    assert rows[0]["weight_bytes"] == smol.backend.stats().weight_bytes
    assert rows[0]["running_memory_bytes"] >= rows[0]["weight_bytes"]
    assert all(r["single_tok_s"] > 0 and r["load_tok_s"] > 0 and r["failed"] == 0 for r in rows)
    assert [r["perplexity"] for r in rows] == [23.5, None]  # found by the gateway's variant label
    table = (out / "compare.md").read_text()
    assert table.startswith(
        "| variant | engine | weight memory | running memory | tok/s single stream | tok/s at C=2 |"
    )
    assert (out / "compare.html").read_text().count("<img") == 3  # tokens/s, TTFT, memory


def test_target_syntax() -> None:
    assert Target.parse("q4=smol@http://h:1", "http://d") == Target("q4", "smol", "http://h:1")
    assert Target.parse("smol", "http://d") == Target("smol", "smol", "http://d")
    assert Target.parse("smol@http://h:1/?a=b", "http://d") == Target("smol", "smol", "http://h:1/?a=b")


def test_the_locustfile_runs_headless_with_real_locust(gateway: RunningServer, tmp_path: Path) -> None:
    locust = Path(sys.executable).with_name("locust")
    final = tmp_path / "locust.json"
    cmd = [str(locust), "-f", str(ROOT / "loadtest" / "locustfile.py"), "--host", gateway.base_url, "--headless"]
    cmd += ["-u", "2", "-r", "2", "--run-time", "4s", "--json-file", str(tmp_path / "locust"), "--only-summary"]
    cmd += ["--model", FAST, "--max-tokens", "8", "--wikitext-words", "16"]
    run_ = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run_.returncode == 0, run_.stderr[-3000:]
    stats = {(e["method"], e["name"]): e for e in json.loads(final.read_text())}
    assert stats, run_.stderr[-3000:] + run_.stdout[-2000:]
    post, ttft, tpot = (stats[(kind, "/v1/completions")] for kind in ("POST", "TTFT", "TPOT"))
    assert post["num_requests"] >= 2 and post["num_failures"] == 0
    assert ttft["num_requests"] == post["num_requests"] == tpot["num_requests"]
    assert post["total_content_length"] == 8 * post["num_requests"]  # size = output tokens
    assert 0 < ttft["total_response_time"] < post["total_response_time"]


def test_bench_sweep_goes_from_one_stream_to_saturation(synthetic: str, tmp_path: Path, wiki: Path) -> None:
    out = tmp_path / "sweep"
    args = ["bench", "sweep", "--base-url", synthetic, "--model", "timed", "--max-users", "8", "--rates", "2"]
    args += ["--requests-per-level", "16", "--max-tokens", "8", "--wikitext", str(wiki), "--out", str(out)]
    assert lightgate(args) == 0
    levels = json.loads((out / "sweep.json").read_text())
    assert levels[0]["level"] == "synchronous" and len(levels) == 4
    done = [lv["summary"]["request_rate"] for lv in levels]
    one_request_s = (TTFT_MS + 7 * ITL_MS) / 1000
    assert done[0] == pytest.approx(1 / one_request_s, rel=0.15)  # one stream: one request at a time
    assert done[-1] == pytest.approx(8 / one_request_s, rel=0.3)  # 8 users: 8 at a time
    offered = [lv["offered"] for lv in levels[1:3]]
    assert all(done[0] < rate < done[-1] for rate in offered)
    assert (out / "sweep.html").read_text().count("<img") == 3


def test_tokenize_and_detokenize_endpoints(gateway: RunningServer, client: openai.OpenAI) -> None:
    text = "The capital of France is Paris."
    r = httpx.post(gateway.base_url + "/tokenize", json={"model": SMOL, "prompt": text})
    assert r.status_code == 200
    tokens = r.json()["tokens"]
    usage = client.completions.create(model=SMOL, prompt=text, max_tokens=1).usage
    assert usage is not None and r.json()["count"] == len(tokens) == usage.prompt_tokens
    assert r.json()["max_model_len"] == 512
    back = httpx.post(gateway.base_url + "/detokenize", json={"model": SMOL, "tokens": tokens}).json()["prompt"]
    assert back.strip() == text
    bad = httpx.post(gateway.base_url + "/detokenize", json={"model": SMOL, "tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.post(gateway.base_url + "/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404


def test_prompts_of_exact_token_lengths(gateway: RunningServer, wiki: Path) -> None:
    lengths = token_lengths(40, 8, 12, seed=1)
    assert len(set(lengths)) > 3
    with httpx.Client(base_url=gateway.base_url) as http:
        source = of_token_lengths(http, SMOL, lengths, wikitext(64, wiki), seed=1)
    spec = RequestSpec(SMOL, max_tokens=1)
    result = asyncio.run(run(gateway.base_url, spec, source, ClosedLoop(2), Stop(requests=len(lengths))))
    seen = [r.prompt_tokens for r in result.records]
    assert all(r.ok for r in result.records)
    # The server's own count of each prompt; re-tokenizing a slice can merge across
    # its edges, so a token either way is allowed, and most must be exact.
    assert all(abs(s - n) <= 1 for s, n in zip(seen, lengths, strict=True) if s is not None), (seen, lengths)
    assert sum(s == n for s, n in zip(seen, lengths, strict=True)) >= len(lengths) * 0.75, (seen, lengths)
