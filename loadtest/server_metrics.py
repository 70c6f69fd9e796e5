"""The server's own figures, read from its Prometheus /metrics before and after a
run: what the client cannot see (weight and running memory, KV-cache usage,
speculative acceptance). A server without /metrics simply adds nothing."""

from __future__ import annotations

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, float]  # series name -> value, summed over the model's series

GAUGES = {  # what to report -> Lightgate series (vLLM's names where it has the same figure)
    "weight_bytes": ("lightgate_model_weight_bytes",),
    "running_memory_bytes": ("lightgate_model_running_memory_bytes",),
    "kv_cache_usage": ("lightgate_kv_cache_usage_ratio", "vllm:kv_cache_usage_perc"),
}
COUNTERS = {
    "server_generation_tokens": ("lightgate_generation_tokens_total", "vllm:generation_tokens_total"),
    "spec_draft_tokens": ("lightgate_spec_decode_draft_tokens_total", "vllm:spec_decode_num_draft_tokens_total"),
    "spec_accepted_tokens": (
        "lightgate_spec_decode_accepted_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total",
    ),
}


def _families(client: httpx.Client) -> list[Metric] | None:
    """The server's /metrics, parsed; None when it has none (or is not a Prometheus target)."""
    try:
        response = client.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return list(text_string_to_metric_families(response.text))
    except ValueError:  # a server that answers /metrics with something else (an SPA, a catch-all route)
        return None


def scrape(client: httpx.Client, model: str) -> Samples | None:
    """The samples of `model` (series with that model label, or no model label)."""
    families = _families(client)
    if families is None:
        return None
    out: Samples = {}
    for family in families:
        for s in family.samples:
            name = s.labels.get("model_name", s.labels.get("model"))
            if name in (None, model):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def server_figures(before: Samples | None, after: Samples | None) -> dict[str, float]:
    """Gauges as they stand after the run; counters as their increase during it."""
    if after is None:
        return {}
    figures: dict[str, float] = {}
    for key, names in GAUGES.items():
        found = next((after[n] for n in names if n in after), None)
        if found is not None:
            figures[key] = found
    for key, names in COUNTERS.items():
        name = next((n for n in names if n in after), None)
        if name is not None:
            figures[key] = after[name] - (before or {}).get(name, 0.0)
    drafted = figures.get("spec_draft_tokens")
    if drafted:
        figures["spec_acceptance_rate"] = figures.get("spec_accepted_tokens", 0.0) / drafted
    return figures


def labels_of(client: httpx.Client, model: str) -> dict[str, str]:
    """The labels a Lightgate gateway puts on `model` (backend, variant); empty elsewhere."""
    for family in _families(client) or []:
        if family.name == "lightgate_model_ready":
            for sample in family.samples:
                if sample.labels.get("model") == model:
                    return dict(sample.labels)
    return {}
