"""Writes deploy/grafana/lightgate.json, the Grafana dashboard for Lightgate's metrics.

The dashboard is generated so that every panel is a short line here and the JSON
stays consistent (ids, grid positions, datasource references); the JSON is what
users import and what the tests run against a real Prometheus. After editing:

    python deploy/grafana/build_dashboard.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("lightgate.json")
# The Helm chart ships the same dashboard as an optional ConfigMap; helm reads files
# only from inside the chart, so it gets a copy (tests/integration/test_helm.py checks it).
CHART_COPY = Path(__file__).parents[2] / "helm" / "lightgate" / "files" / "lightgate-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'
RATE = "$__rate_interval"
ERRORS = M + ', outcome=~"server_error|rejected"'
LOAD_S = "lightgate_model_load_seconds"


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def rate(metric: str, by: str = "model", where: str = M) -> str:
    return f"sum by ({by}) (rate({metric}{{{where}}}[{RATE}]))"


def quantiles(histogram: str) -> list[tuple[str, str]]:
    """p50, p90 and p99 of a histogram, and its mean, per model."""
    out = [
        (
            f"histogram_quantile({q}, sum by (le, model) (rate({histogram}_bucket{{{M}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{model}}}}",
        )
        for q in (0.5, 0.9, 0.99)
    ]
    out.append((f"{rate(histogram + '_sum')} / {rate(histogram + '_count')}", "mean {{model}}"))
    return out


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Overview",
        [
            Panel(
                "Requests/s by outcome",
                [(rate("lightgate_requests_total", "model, outcome"), "{{model}} {{outcome}}")],
                "reqps",
                description="Finished requests by outcome: stop and length are finish reasons; embedded is an "
                "embedding request answered (its model's series carry task=embed); aborted means the client left; "
                "rejected is a 429 (queue full).",
            ),
            Panel(
                "Error ratio",
                [
                    (
                        f"{rate('lightgate_requests_total', where=ERRORS)} / {rate('lightgate_requests_total')}",
                        "{{model}}",
                    )
                ],
                "percentunit",
                description="Server errors and rejections (429) over all requests that reached a model.",
            ),
            Panel(
                "Running requests",
                [(f"sum by (model) (lightgate_requests_running{{{M}}})", "{{model}}")],
                description="Requests inside the engine (holding an admission slot).",
            ),
            Panel(
                "Waiting requests",
                [(f"sum by (model) (lightgate_requests_waiting{{{M}}})", "{{model}}")],
                description="Requests queued for an admission slot; beyond the queue they get 429.",
            ),
            Panel(
                "Models ready",
                [(f"lightgate_model_ready{{{M}}}", "{{model}}")],
                kind="stat",
                description="1 when loaded and serving.",
            ),
        ],
    ),
    (
        "Latency",
        [
            Panel("Time to first token", quantiles("lightgate_time_to_first_token_seconds"), "s"),
            Panel("Inter-token latency", quantiles("lightgate_inter_token_latency_seconds"), "s"),
            Panel("Time per output token", quantiles("lightgate_time_per_output_token_seconds"), "s"),
            Panel("End-to-end request latency", quantiles("lightgate_e2e_request_latency_seconds"), "s"),
            Panel("Queue time", quantiles("lightgate_request_queue_time_seconds"), "s"),
        ],
    ),
    (
        "Throughput",
        [
            Panel("Prompt tokens/s", [(rate("lightgate_prompt_tokens_total"), "{{model}}")], "short"),
            Panel("Generation tokens/s", [(rate("lightgate_generation_tokens_total"), "{{model}}")], "short"),
            Panel("Prompt tokens per request", quantiles("lightgate_request_prompt_tokens"), "short"),
            Panel("Generated tokens per request", quantiles("lightgate_request_generation_tokens"), "short"),
        ],
    ),
    (
        "Memory",
        [
            Panel(
                "Weight memory (WM)",
                [(f"lightgate_model_weight_bytes{{{M}}}", "{{model}} {{variant}}")],
                "bytes",
                description="The model's weights as loaded: the survey's WM.",
            ),
            Panel(
                "Running memory (RM)",
                [(f"lightgate_model_running_memory_bytes{{{M}}}", "{{model}} {{variant}}")],
                "bytes",
                description="Peak memory while serving (the survey's RM); on a CPU, the gateway process's peak RSS.",
            ),
            Panel(
                "Process memory",
                [
                    ("process_resident_memory_bytes", "RSS {{instance}}"),
                    ("process_virtual_memory_bytes", "virtual {{instance}}"),
                ],
                "bytes",
            ),
            Panel(
                "GPU memory",
                [
                    ("lightgate_gpu_memory_used_bytes", "used gpu {{gpu}} {{instance}}"),
                    ("lightgate_gpu_memory_total_bytes", "total gpu {{gpu}} {{instance}}"),
                ],
                "bytes",
                description="Through NVML; absent on a machine without a GPU.",
            ),
            Panel(
                "KV cache usage",
                [(f"lightgate_kv_cache_usage_ratio{{{M}}}", "{{model}}")],
                "percentunit",
                description="Fraction of the engine's KV cache in use, for engines that report it.",
            ),
            Panel(
                "Prefix cache hit rate",
                [
                    (
                        f"{rate('lightgate_prefix_cache_hits_total')} / {rate('lightgate_prefix_cache_queries_total')}",
                        "{{model}}",
                    )
                ],
                "percentunit",
                description="Of the prompt tokens sent, those whose KV the engine reused instead of computing "
                "(a shared system prompt, a conversation's earlier turns).",
            ),
        ],
    ),
    (
        "Tenants",
        [
            Panel(
                "Requests/s by tenant and outcome",
                [(rate("lightgate_tenant_requests_total", "tenant, outcome"), "{{tenant}} {{outcome}}")],
                description="Requests that reached a model, under the API key's tenant name (anonymous without "
                "keys); never the key.",
            ),
            Panel(
                "Tokens/s by tenant",
                [
                    (rate("lightgate_tenant_prompt_tokens_total", "tenant"), "{{tenant}} prompt"),
                    (rate("lightgate_tenant_generation_tokens_total", "tenant"), "{{tenant}} generated"),
                ],
                description="What each tenant's requests cost the engines, for quotas and billing.",
            ),
            Panel(
                "Refusals/s by tenant and reason",
                [(rate("lightgate_tenant_refusals_total", "tenant, reason", ""), "{{tenant}} {{reason}}")],
                description="Requests turned away before the engine: a bad key, a model the key may not use, its "
                "requests or tokens per minute, its concurrency, or the model's queue (queue_wait: a wait past "
                "the deadline; queue_full).",
            ),
        ],
    ),
    (
        "Residency",
        [
            Panel(
                "Models in memory",
                [(f"lightgate_model_loaded{{{M}}}", "{{model}}")],
                description="1 while the model is in memory (loaded, or its worker restarting); models with "
                "worker: true come and go under the memory budget (load: on_demand, idle_unload_s, eviction).",
            ),
            Panel(
                "Loads and unloads/s",
                [
                    (rate("lightgate_model_load_seconds_count"), "{{model}} loads"),
                    (rate("lightgate_model_unloads_total", "model, reason"), "{{model}} {{reason}}"),
                    (rate("lightgate_model_thrash_total"), "{{model}} thrash"),
                ],
                description="Loads (at start and on demand) and unloads by reason: idle, evicted (to make room), "
                "admin. Thrash: a model loaded again within a minute of its eviction; raise memory_budget or pin one.",
            ),
            Panel(
                "Mean load time",
                [(f"{LOAD_S}_sum{{{M}}} / {LOAD_S}_count{{{M}}}", "{{model}}")],
                "s",
                description="How long a request for an unloaded model waits for it, on average since start.",
            ),
            Panel(
                "Memory budget used",
                [
                    ("lightgate_memory_budget_used_bytes", "used"),
                    ("lightgate_gpu_memory_budget_used_bytes", "GPU {{gpu}} used"),
                    ("lightgate_gpu_memory_budget_bytes", "GPU {{gpu}} budget"),
                ],
                "bytes",
                description="What the models in worker processes hold (measured peak RSS, else an estimate from "
                "the weights); compare with lightgate_memory_budget_bytes, the memory_budget, when one is set. "
                "On GPUs: what they hold on each (NVML per worker process, else estimates) and gpu_memory_budget.",
            ),
            Panel(
                "Engine restarts",
                [(f"sum by (model) (increase(lightgate_engine_restarts_total{{{M}}}[1h]))", "{{model}}")],
                description="Engine workers that died and were started again, over the last hour.",
            ),
        ],
    ),
    (
        "Speculative decoding",
        [
            Panel(
                "Acceptance rate",
                [
                    (
                        f"{rate('lightgate_spec_decode_accepted_tokens_total')}"
                        f" / {rate('lightgate_spec_decode_draft_tokens_total')}",
                        "{{model}}",
                    )
                ],
                "percentunit",
                description="Draft tokens the target accepted; empty until a speculative model is served.",
            ),
            Panel(
                "Accepted tokens per draft",
                [
                    (
                        f"{rate('lightgate_spec_decode_accepted_tokens_total')}"
                        f" / {rate('lightgate_spec_decode_drafts_total')}",
                        "{{model}}",
                    )
                ],
                description="Mean accepted length per verification step.",
            ),
        ],
    ),
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "type": "row",
                "id": next_id,
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        next_id += 1
        y += 1
        for i, p in enumerate(row_panels):
            width = 8
            panels.append(
                {
                    "type": p.kind,
                    "id": next_id,
                    "title": p.title,
                    "description": p.description,
                    "datasource": DS,
                    "gridPos": {"h": 8, "w": width, "x": (i % 3) * width, "y": y + (i // 3) * 8},
                    "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                    "targets": [
                        {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + j)}
                        for j, (expr, legend) in enumerate(p.targets)
                    ],
                    **p.extra,
                }
            )
            next_id += 1
        y += 8 * -(-len(row_panels) // 3)
    return {
        "title": "Lightgate",
        "uid": "lightgate",
        "description": "Latency, throughput, queueing and memory of every model a Lightgate gateway serves.",
        "tags": ["lightgate", "llm", "inference"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus"},
                {
                    "type": "query",
                    "name": "model",
                    "label": "Model",
                    "datasource": DS,
                    "definition": "label_values(lightgate_model_ready, model)",
                    "query": {"query": "label_values(lightgate_model_ready, model)", "refId": "models"},
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def main() -> None:
    text = json.dumps(build(), indent=2) + "\n"
    for out in (OUT, CHART_COPY):
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
