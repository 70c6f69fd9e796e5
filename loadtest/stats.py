"""The maths of a run: distributions of TTFT, ITL, TPOT and end-to-end latency
(mean, median, p90, p99, std), throughput over the run's wall time, and goodput:
requests per second that met every service-level objective given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from loadtest.client import RequestRecord
from loadtest.shapes import RunResult

SLO_KEYS = ("ttft", "itl", "tpot", "e2e")


@dataclass(slots=True, frozen=True)
class Distribution:
    count: int
    mean: float
    median: float
    p90: float
    p99: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Distribution | None:
        if not values:
            return None
        a = np.asarray(values, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])  # linear interpolation, as vLLM's benchmark
        return cls(
            len(a), float(a.mean()), float(p50), float(p90), float(p99), float(a.std()), float(a.min()), float(a.max())
        )


def parse_slo(text: str) -> dict[str, float]:
    """`ttft=200ms,itl=50ms,e2e=2s` -> seconds per key. itl is a request's mean
    inter-token latency, tpot its time per output token, e2e its whole time."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\w+)\s*=\s*([0-9.]+)\s*(ms|s)?", part)
        if not m or m.group(1) not in SLO_KEYS:
            raise ValueError(f"bad SLO {part!r}: write key=value[ms|s] with key in {', '.join(SLO_KEYS)}")
        value = float(m.group(2))
        out[m.group(1)] = value / 1000 if m.group(3) == "ms" else value
    return out


def meets(record: RequestRecord, slo: dict[str, float]) -> bool:
    if not record.ok:
        return False
    itls = record.itls()
    measured = {
        "ttft": record.ttft,
        "itl": sum(itls) / len(itls) if itls else 0.0,
        "tpot": record.tpot or 0.0,
        "e2e": record.e2e,
    }
    return all((measured[k] or 0.0) <= limit for k, limit in slo.items())


@dataclass(slots=True)
class Summary:
    shape: str
    stopped_by: str
    requests: int
    failed: int
    wall_s: float
    request_rate: float  # successful requests per second
    output_tok_s: float
    prompt_tok_s: float
    ttft: Distribution | None
    itl: Distribution | None
    tpot: Distribution | None
    e2e: Distribution | None
    goodput: float | None  # requests/s meeting every SLO, when SLOs were given
    slo: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # message -> count
    server: dict[str, float] = field(default_factory=dict)  # figures from the server's /metrics


def summarize(result: RunResult, slo: dict[str, float] | None = None) -> Summary:
    ok = [r for r in result.records if r.ok]
    wall = result.wall_s or float("nan")
    errors: dict[str, int] = {}
    for r in result.records:
        if not r.ok:
            key = r.error or f"HTTP {r.status}"
            errors[key] = errors.get(key, 0) + 1
    return Summary(
        shape=result.shape,
        stopped_by=result.stopped_by,
        requests=len(result.records),
        failed=len(result.records) - len(ok),
        wall_s=result.wall_s,
        request_rate=len(ok) / wall,
        output_tok_s=sum(r.tokens for r in ok) / wall,
        prompt_tok_s=sum(r.prompt_tokens or 0 for r in ok) / wall,
        ttft=Distribution.of([r.ttft for r in ok if r.ttft is not None]),
        itl=Distribution.of([x for r in ok for x in r.itls()]),
        tpot=Distribution.of([t for r in ok if (t := r.tpot) is not None]),
        e2e=Distribution.of([r.e2e for r in ok]),
        goodput=sum(meets(r, slo) for r in ok) / wall if slo else None,
        slo=dict(slo or {}),
        errors=errors,
    )
