"""The load tester's arithmetic on hand-made records: inter-token latencies when a
chunk carries several tokens, distributions, SLOs and goodput, arrival processes."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from loadtest.client import RequestRecord, RequestSpec
from loadtest.shapes import OpenLoop, RunResult, Stop
from loadtest.stats import Distribution, meets, parse_slo, summarize


def record(chunks: list[float], tokens: int | None = None, end: float | None = None) -> RequestRecord:
    r = RequestRecord(index=0, start=0.0, end=end if end is not None else chunks[-1], status=200)
    r.chunk_times = chunks
    r.output_tokens = tokens
    return r


def test_one_token_per_chunk_gives_the_gaps() -> None:
    r = record([1.0, 1.1, 1.3, 1.6], tokens=4)
    assert r.itls() == pytest.approx([0.1, 0.2, 0.3])
    assert r.ttft == 1.0 and r.tpot == pytest.approx(0.2)


def test_chunks_of_several_tokens_share_their_gap() -> None:
    # 7 tokens in 4 chunks: the 3 gaps brought 6 tokens, 2 each.
    r = record([0.5, 0.7, 0.9, 1.1], tokens=7)
    itls = r.itls()
    assert len(itls) == 6 and sum(itls) == pytest.approx(0.6)
    assert itls == pytest.approx([0.1] * 6)
    assert r.tpot == pytest.approx(0.1)


def test_uneven_sharing_still_sums_to_the_decode_time() -> None:
    r = record([0.0, 0.3, 0.4, 1.0], tokens=6)  # 5 tokens over 3 gaps
    itls = r.itls()
    assert len(itls) == 5 and sum(itls) == pytest.approx(1.0)


def test_distribution_matches_numpy() -> None:
    values = [0.05, 0.01, 0.2, 0.11, 0.07, 0.3, 0.02]
    d = Distribution.of(values)
    assert d is not None
    assert d.median == pytest.approx(float(np.median(values)))
    assert d.p90 == pytest.approx(float(np.percentile(values, 90)))
    assert d.std == pytest.approx(float(np.std(values)))
    assert (d.count, d.min, d.max) == (7, 0.01, 0.3)
    assert Distribution.of([]) is None


def test_slo_parsing_and_goodput() -> None:
    assert parse_slo("ttft=200ms, itl=50ms,e2e=2s") == {"ttft": 0.2, "itl": 0.05, "e2e": 2.0}
    with pytest.raises(ValueError, match="bad SLO"):
        parse_slo("latency=3")
    fast = record([0.1, 0.14, 0.18], tokens=3)
    slow_start = record([0.5, 0.52, 0.54], tokens=3)
    failed = record([0.1], tokens=1)
    failed.error = "HTTP 500: boom"
    slo = parse_slo("ttft=200ms,itl=50ms")
    assert meets(fast, slo) and not meets(slow_start, slo) and not meets(failed, slo)
    result = RunResult("closed loop, 1 users", [fast, slow_start, failed], wall_s=2.0)
    s = summarize(result, slo)
    assert s.goodput == pytest.approx(0.5)  # one request of three met both, over 2 s
    assert s.request_rate == pytest.approx(1.0) and s.failed == 1
    assert s.output_tok_s == pytest.approx(3.0)
    assert s.errors == {"HTTP 500: boom": 1}


def test_arrival_processes() -> None:
    draws = 20000
    constant = OpenLoop(4.0, "constant").intervals()
    assert {constant() for _ in range(10)} == {0.25}
    poisson = OpenLoop(4.0, "poisson", seed=1).intervals()
    gaps = [poisson() for _ in range(draws)]
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.03)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    bursty = OpenLoop(4.0, "gamma", burstiness=0.25, seed=2).intervals()
    gaps = [bursty() for _ in range(draws)]
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.05)  # same mean rate...
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(2.0, rel=0.08)  # ...CV 1/sqrt(k)


def test_a_run_needs_a_way_to_stop() -> None:
    with pytest.raises(ValueError):
        Stop()


def test_request_bodies() -> None:
    body = RequestSpec("m", "chat", max_tokens=8).body("hi")
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["stream"] is True
    assert body["ignore_eos"] is True and body["min_tokens"] == 8
    assert body["stream_options"] == {"include_usage": True}
    plain = RequestSpec("m", ignore_eos=False).body("x")
    assert plain["prompt"] == "x" and "ignore_eos" not in plain and "min_tokens" not in plain
