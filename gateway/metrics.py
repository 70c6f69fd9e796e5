"""Prometheus metrics for GET /metrics: latency histograms and token counters fed by
each request as it runs, and gauges read from the router and the backends' own
`stats()` at scrape time (the gateway never guesses an engine's numbers).

Every series carries the labels model, backend and variant, and nothing per
request, so the number of series stays fixed however many requests pass. Names
and units follow Prometheus' conventions (base units, `_total` on counters) and
the histograms use bucket sets like vLLM's, so dashboards built for one read the
other with small changes. docs/operations.md lists every series."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from gateway.gpu import GpuCollector
from gateway.residency import Residency
from gateway.router import Deployment, Router, State

# `_created` timestamps double the exposition and no dashboard reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# task: generate or embed, so that a dashboard tells embedding requests and their
# input tokens apart from generation in the same families.
LABELS = ("model", "backend", "variant", "task")
UNLOAD_REASONS = ("idle", "evicted", "admin")
IN_MEMORY = (State.READY, State.RESTARTING, State.DRAINING)
OUTCOMES = ("stop", "length", "embedded", "aborted", "rejected", "client_error", "server_error")

# vLLM's buckets (vllm/v1/metrics/loggers.py), with steps below its first one added
# where small models on fast hardware land: a 135M model decodes a token in ~1 ms on
# a GPU, and a request can wait in no queue at all.
TTFT_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
)
ITL_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
)
REQUEST_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.05, 0.1),
    *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0),
)
TOKEN_BUCKETS = tuple(float(m * 10**e) for e in range(6) for m in (1, 2, 5))  # 1 ... 500,000, as vLLM's 1-2-5


def labels_of(d: Deployment) -> tuple[str, str, str, str]:
    c = d.config
    variant = c.variant or (Path(c.path).stem if c.path else "")
    return c.name, c.backend, variant, d.task


@dataclass(slots=True, frozen=True)
class ModelSeries:
    """One model's children of every per-request metric, bound once: `.labels()`
    takes a lock and a dict lookup, which per token adds up."""

    ttft: Any
    itl: Any
    tpot: Any
    e2e: Any
    queue: Any
    prompt_tokens: Any
    generation_tokens: Any
    prompt_tokens_total: Any
    generation_tokens_total: Any
    requests: dict[str, Any]  # outcome -> counter child


class Metrics:
    def __init__(self, router: Router, residency: Residency | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r)

        self._ttft = histogram(
            "lightgate_time_to_first_token_seconds",
            "From the request's arrival to its first generated token.",
            TTFT_BUCKETS,
        )
        self._itl = histogram(
            "lightgate_inter_token_latency_seconds",
            "Between consecutive tokens of one sequence (a chunk of k tokens counts k gaps of 1/k each).",
            ITL_BUCKETS,
        )
        self._tpot = histogram(
            "lightgate_time_per_output_token_seconds",
            "Per request: (last token - first token) / (output tokens - 1).",
            ITL_BUCKETS,
        )
        self._e2e = histogram(
            "lightgate_e2e_request_latency_seconds", "From arrival to the end of the response.", REQUEST_BUCKETS
        )
        self._queue = histogram(
            "lightgate_request_queue_time_seconds",
            "Time spent waiting for an admission slot before reaching the engine.",
            REQUEST_BUCKETS,
        )
        self._prompt = histogram("lightgate_request_prompt_tokens", "Prompt tokens per request.", TOKEN_BUCKETS)
        self._generation = histogram(
            "lightgate_request_generation_tokens", "Generated tokens per request (every choice).", TOKEN_BUCKETS
        )
        self._prompt_total = Counter("lightgate_prompt_tokens", "Prompt tokens sent to the engine.", LABELS, registry=r)
        self._generation_total = Counter(
            "lightgate_generation_tokens", "Tokens generated, counted as they stream.", LABELS, registry=r
        )
        self._requests = Counter(
            "lightgate_requests",
            "Requests that reached a model, by outcome: the finish reason (stop, length), embedded (an embedding "
            "request answered), aborted by a "
            "client disconnect, rejected (429, queue full), client_error (other 4xx) or server_error (5xx).",
            [*LABELS, "outcome"],
            registry=r,
        )
        # Usage per API key, under the key's name (never the key): what it asked for,
        # what it was given, and why it was turned away.
        self._tenant_requests = Counter(
            "lightgate_tenant_requests",
            "Requests that reached a model, per API key's tenant name ('anonymous' without keys) and outcome.",
            ["tenant", "model", "outcome"],
            registry=r,
        )
        self._tenant_prompt = Counter(
            "lightgate_tenant_prompt_tokens", "Prompt tokens per tenant.", ["tenant", "model"], registry=r
        )
        self._tenant_generation = Counter(
            "lightgate_tenant_generation_tokens", "Generated tokens per tenant.", ["tenant", "model"], registry=r
        )
        self._tenant_refusals = Counter(
            "lightgate_tenant_refusals",
            "Requests turned away before the engine, per tenant and reason (the error code: invalid_api_key, "
            "model_not_allowed, requests_per_minute, tokens_per_minute, concurrent_requests, queue_wait, "
            "queue_full).",
            ["tenant", "reason"],
            registry=r,
        )
        r.register(EngineCollector(router))
        if residency is not None:
            r.register(BudgetCollector(residency))
        prometheus_client.ProcessCollector(registry=r)
        prometheus_client.PlatformCollector(registry=r)
        gpu = residency.gpu if residency is not None else GpuCollector.create()
        if gpu is not None:
            r.register(gpu)
        self._series: dict[tuple[str, str, str, str], ModelSeries] = {}
        for d in router.deployments:  # every series exists from the start, at zero
            self.series(d)

    def series(self, d: Deployment) -> ModelSeries:
        key = labels_of(d)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = ModelSeries(
                ttft=self._ttft.labels(*key),
                itl=self._itl.labels(*key),
                tpot=self._tpot.labels(*key),
                e2e=self._e2e.labels(*key),
                queue=self._queue.labels(*key),
                prompt_tokens=self._prompt.labels(*key),
                generation_tokens=self._generation.labels(*key),
                prompt_tokens_total=self._prompt_total.labels(*key),
                generation_tokens_total=self._generation_total.labels(*key),
                requests={o: self._requests.labels(*key, o) for o in OUTCOMES},
            )
        return found

    def count_usage(
        self, tenant: str, model: str | None, outcome: str | None, prompt: int, generated: int, refusal: str | None
    ) -> None:
        """One request's part in its tenant's usage (nothing for a request that named no model)."""
        if refusal is not None:
            self._tenant_refusals.labels(tenant, refusal).inc()
        if model is None or outcome is None:
            return
        self._tenant_requests.labels(tenant, model, outcome).inc()
        if prompt:
            self._tenant_prompt.labels(tenant, model).inc(prompt)
        if generated:
            self._tenant_generation.labels(tenant, model).inc(generated)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=LABELS)


class EngineCollector(Collector):
    """Gauges read at scrape time: the gateway's admission queue and what each
    backend's `stats()` reports. A number a backend does not report is absent."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def describe(self) -> Iterable[Metric]:
        return []  # the series depend on the models; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        ready = _gauge("lightgate_model_ready", "1 when the model is loaded and serving, else 0.")
        restarts = CounterMetricFamily(
            "lightgate_engine_restarts",
            "Times the model's engine worker died and was started again (models with worker: true).",
            labels=LABELS,
        )
        loaded = _gauge("lightgate_model_loaded", "1 when the model is in memory (loaded, or restarting), else 0.")
        loads = SummaryMetricFamily(
            "lightgate_model_load_seconds",
            "Loads of the model (at start and on demand) and their duration.",
            labels=LABELS,
        )
        unloads = CounterMetricFamily(
            "lightgate_model_unloads",
            "Times the model left memory, by reason: idle (idle_unload_s), evicted (to make room), admin.",
            labels=[*LABELS, "reason"],
        )
        thrash = CounterMetricFamily(
            "lightgate_model_thrash",
            "Loads that came soon (60 s) after the model was evicted: two models keep evicting each other.",
            labels=LABELS,
        )
        running = _gauge("lightgate_requests_running", "Requests holding an admission slot (inside the engine).")
        waiting = _gauge("lightgate_requests_waiting", "Requests queued for an admission slot.")
        capacity = _gauge("lightgate_requests_max_running", "Admission slots: requests the engine runs at once.")
        seq_running = _gauge("lightgate_engine_sequences_running", "Sequences the engine is decoding, per stats().")
        seq_waiting = _gauge("lightgate_engine_sequences_waiting", "Sequences queued inside the engine, per stats().")
        kv = _gauge("lightgate_kv_cache_usage_ratio", "Fraction of the engine's KV cache in use.")
        weights = _gauge("lightgate_model_weight_bytes", "Weight memory (the survey's WM): the model as loaded.")
        peak = _gauge(
            "lightgate_model_running_memory_bytes",
            "Running memory (the survey's RM): peak memory while serving; on a CPU, the process's peak RSS.",
        )
        spec = {
            "drafts": CounterMetricFamily(
                "lightgate_spec_decode_drafts",
                "Speculative verification passes that checked draft tokens.",
                labels=LABELS,
            ),
            "draft_tokens": CounterMetricFamily(
                "lightgate_spec_decode_draft_tokens", "Tokens proposed by the draft model.", labels=LABELS
            ),
            "accepted_tokens": CounterMetricFamily(
                "lightgate_spec_decode_accepted_tokens", "Draft tokens the target model accepted.", labels=LABELS
            ),
        }
        prefix = {
            "queries": CounterMetricFamily(
                "lightgate_prefix_cache_queries",
                "Prompt tokens looked up in the engine's prefix cache.",
                labels=LABELS,
            ),
            "hits": CounterMetricFamily(
                "lightgate_prefix_cache_hits",
                "Prompt tokens whose KV came from the prefix cache instead of being computed.",
                labels=LABELS,
            ),
        }
        up = [*LABELS, "upstream"]
        upstream: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "available": GaugeMetricFamily(
                "lightgate_upstream_available",
                "1 when the upstream replica is healthy and not ejected (requests may go there), else 0.",
                labels=up,
            ),
            "outstanding": GaugeMetricFamily(
                "lightgate_upstream_outstanding_requests", "Requests in flight to the replica.", labels=up
            ),
            "requests": CounterMetricFamily(
                "lightgate_upstream_requests", "Attempts sent to the replica (a failover counts twice).", labels=up
            ),
            "errors": CounterMetricFamily(
                "lightgate_upstream_errors",
                "Attempts that failed: no connection, a 5xx, a broken or timed-out stream.",
                labels=up,
            ),
            "ejections": CounterMetricFamily(
                "lightgate_upstream_ejections", "Times the replica was ejected after consecutive failures.", labels=up
            ),
        }
        for d in self.router.deployments:
            labels = list(labels_of(d))
            ready.add_metric(labels, float(d.ready))
            restarts.add_metric(labels, d.restarts)
            loaded.add_metric(labels, float(d.state in IN_MEMORY))
            loads.add_metric(labels, d.loads, d.load_seconds_sum)
            for reason in UNLOAD_REASONS:
                unloads.add_metric([*labels, reason], d.unloads.get(reason, 0))
            thrash.add_metric(labels, d.thrash)
            running.add_metric(labels, d.admission.running)
            waiting.add_metric(labels, d.admission.waiting)
            if not d.started:
                continue
            capacity.add_metric(labels, d.admission.max_running)
            stats = d.backend.stats()
            seq_running.add_metric(labels, stats.running)
            seq_waiting.add_metric(labels, stats.waiting)
            if stats.kv_cache_usage is not None:
                kv.add_metric(labels, stats.kv_cache_usage)
            if stats.weight_bytes is not None:
                weights.add_metric(labels, stats.weight_bytes)
            if stats.running_memory_bytes is not None:
                peak.add_metric(labels, stats.running_memory_bytes)
            if stats.speculative is not None:
                for field, family in spec.items():
                    family.add_metric(labels, getattr(stats.speculative, field))
            if stats.prefix_cache is not None:
                for field, family in prefix.items():
                    family.add_metric(labels, getattr(stats.prefix_cache, field))
            for replica in stats.upstreams or ():
                for field, series in upstream.items():
                    series.add_metric([*labels, replica.url], float(getattr(replica, field)))
        yield from (ready, restarts, loaded, loads, unloads, thrash)
        yield from (running, waiting, capacity, seq_running, seq_waiting, kv, weights, peak)
        yield from spec.values()
        yield from prefix.values()
        yield from upstream.values()


class BudgetCollector(Collector):
    """The memory budget and what the models in worker processes hold of it."""

    def __init__(self, residency: Residency) -> None:
        self.residency = residency

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "lightgate_memory_budget_used_bytes",
            "Footprint of the models with worker: true now in memory (measured peak RSS, else an estimate).",
        )
        held = self.residency.holding()
        used.add_metric([], held.host)
        yield used
        if self.residency.budget is not None:
            doc = "memory_budget: the host memory those models may hold together."
            yield GaugeMetricFamily("lightgate_memory_budget_bytes", doc, value=self.residency.budget)
        gpu_used = GaugeMetricFamily(
            "lightgate_gpu_memory_budget_used_bytes",
            "Footprint on each GPU of the models with worker: true now in memory (measured, else an estimate).",
            labels=["gpu"],
        )
        gpu_budget = GaugeMetricFamily(
            "lightgate_gpu_memory_budget_bytes",
            "gpu_memory_budget: what those models may hold on each GPU.",
            labels=["gpu"],
        )
        for i in sorted(held.gpu.keys() | self.residency.gpu_budgets.keys()):
            gpu_used.add_metric([str(i)], held.gpu.get(i, 0))
        for i, limit in sorted(self.residency.gpu_budgets.items()):
            gpu_budget.add_metric([str(i)], limit)
        per_model = GaugeMetricFamily(
            "lightgate_model_gpu_memory_bytes",
            "GPU memory a model's worker process holds at most in this run, per GPU (NVML, sampled each second).",
            labels=["model", "gpu"],
        )
        for d in self.residency.router.deployments:
            for i, used_bytes in sorted((d.peak.gpu if d.peak is not None else {}).items()):
                per_model.add_metric([d.name, str(i)], used_bytes)
        yield from (gpu_used, gpu_budget, per_model)
