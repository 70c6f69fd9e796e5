"""Three compressed variants behind one gateway under a memory budget that holds two:
a client asks two of them in turn and the third now and then, so the third's
requests find it unloaded and evict one of the pair, which then loads again.
Reported: requests that succeeded (a swap must never fail one), loads and
evictions, TTFT of a request whose model was loaded (hit) and of one that had to
wait for a load (miss), and the budget's use, sampled from /metrics throughout,
against the budget.

    .venv/bin/python -m benchmarks.residency
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import httpx
import openai
from rich.console import Console
from rich.progress import Progress

from benchmarks.common import lightgate_config, percentile, print_table, save_json
from leanhttp.local import free_port, server

VARIANTS = {
    "smollm2": "smollm2-135m-instruct-q4_1",
    "qwen0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m",
    "qwen1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m",
}
console = Console(stderr=True)


def used_bytes(base: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("lightgate_memory_budget_used_bytes "):
            return float(line.split()[1])
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="2GiB", help="memory_budget (holds two of the three)")
    parser.add_argument("--cycles", type=int, default=3, help="passes over the pattern (7 requests each)")
    parser.add_argument("--out", default="bench-results/residency.json")
    args = parser.parse_args()
    models = [
        {"name": n, "variant": v, "worker": True, "load": "on_demand", "min_resident_s": 0,
         "options": {"n_ctx": 512, "n_parallel": 2, "cache_ram_mib": 0}}  # no prompt store: weights and slots
        for n, v in VARIANTS.items()
    ]  # fmt: skip
    config = lightgate_config(models, memory_budget=args.budget)
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    rows: list[dict[str, Any]] = []
    peak = 0.0
    with server(cmd, port, "/ready", {}) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, used_bytes(base))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # Two variants in steady use, the third now and then: LRU keeps the pair (a strict
        # cycle over three would make every request a miss, LRU's worst case).
        order = (["smollm2", "qwen0.5b"] * 3 + ["qwen1.5b"]) * args.cycles
        with Progress(console=console) as progress:
            task = progress.add_task("requests across three variants", total=len(order))
            for name in order:
                state = next(m["state"] for m in httpx.get(base + "/v1/models").json()["data"] if m["id"] == name)
                began = time.perf_counter()
                try:
                    stream = client.completions.create(model=name, prompt="def add(a, b):", max_tokens=16, stream=True)
                    first = None
                    for _ in stream:
                        first = first or time.perf_counter() - began
                    ok = True
                except openai.APIError as exc:
                    first, ok = None, False
                    console.print(f"{name}: {exc}")
                rows.append({"model": name, "was": state, "ttft_s": first, "ok": ok})
                progress.advance(task)
        sampling = False
        metrics = httpx.get(base + "/metrics").text.splitlines()
    loads = sum(float(x.split()[1]) for x in metrics if x.startswith("lightgate_model_load_seconds_count"))
    evicted = [x for x in metrics if x.startswith("lightgate_model_unloads_total") and 'reason="evicted"' in x]
    evictions = sum(float(x.split()[1]) for x in evicted)
    hits = [r["ttft_s"] * 1000 for r in rows if r["ok"] and r["was"] == "ready"]
    misses = [r["ttft_s"] * 1000 for r in rows if r["ok"] and r["was"] == "unloaded"]
    budget = next(float(x.split()[1]) for x in metrics if x.startswith("lightgate_memory_budget_bytes "))
    summary = {
        "requests": len(rows),
        "succeeded": sum(r["ok"] for r in rows),
        "loads": loads,
        "evictions": evictions,
        "ttft_ms_hit_p50": percentile(hits, 50),
        "ttft_ms_miss_p50": percentile(misses, 50),
        "hits": len(hits),
        "misses": len(misses),
        "peak_used_mib": peak / 2**20,
        "budget_mib": budget / 2**20,
    }
    save_json(args.out, {"summary": summary, "requests": rows})
    print_table(
        ["requests", "succeeded", "loads", "evictions", "TTFT p50 hit ms", "TTFT p50 miss ms", "peak used MiB",
         "budget MiB"],
        [[str(summary["requests"]), str(summary["succeeded"]), f"{loads:.0f}", f"{evictions:.0f}",
          f"{summary['ttft_ms_hit_p50']:.0f} ({len(hits)})", f"{summary['ttft_ms_miss_p50']:.0f} ({len(misses)})",
          f"{summary['peak_used_mib']:.0f}", f"{summary['budget_mib']:.0f}"]],
    )  # fmt: skip


if __name__ == "__main__":
    main()
