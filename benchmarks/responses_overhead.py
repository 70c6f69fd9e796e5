"""What the Responses API adds over chat completions for the same generation: one
Lightgate server (SmolLM2 on llamacpp), the same conversation sent as a streamed
chat completion and as a streamed response (store on, and off), one request at a
time in interleaved order. TTFT is from sending the request to the first text delta
(`delta.content` on chat, `response.output_text.delta` on responses); the whole
request's time is measured too (8 greedy tokens, then the store's write).

    .venv/bin/python benchmarks/responses_overhead.py [--pairs 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentile, print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server

console = Console()
MODEL = "smollm2-135m-instruct-q4_1"
QUESTION = "Name three colours of the rainbow."


def timed(client: httpx.Client, path: str, body: dict[str, Any], first: str) -> tuple[float, float]:
    """(TTFT, whole) in seconds for one streamed request; `first` marks a text delta."""
    began = time.perf_counter()
    ttft = float("nan")
    with client.stream("POST", path, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if ttft != ttft and line.startswith("data: ") and first in line and _has_text(line):
                ttft = time.perf_counter() - began
    return ttft, time.perf_counter() - began


def _has_text(line: str) -> bool:
    data = json.loads(line.removeprefix("data: "))
    if "choices" in data:
        return bool(data["choices"] and data["choices"][0]["delta"].get("content"))
    return bool(data.get("delta"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--out", default="bench-results/responses_overhead.json")
    args = parser.parse_args()
    port = free_port()
    db = Path(args.out).with_suffix(".sqlite")
    config = Path(args.out).with_suffix(".yaml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        json.dumps(
            {"responses_db": str(db), "models": [{"name": "m", "path": str(resolve(MODEL)), "options": {"n_ctx": 512}}]}
        )
    )
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    common = {"model": "m", "temperature": 0, "stream": True}
    kinds = {
        "chat": (
            "/v1/chat/completions",
            {**common, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8},
            "content",
        ),
        "responses": ("/v1/responses", {**common, "input": QUESTION, "max_output_tokens": 8}, "output_text.delta"),
        "responses, store off": (
            "/v1/responses",
            {**common, "input": QUESTION, "max_output_tokens": 8, "store": False},
            "output_text.delta",
        ),
    }
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with server(cmd, port, "/ready") as base, httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(10):  # warm-up
            for path, body, first in kinds.values():
                timed(client, path, body, first)
        for i in track(range(args.pairs), description="interleaved requests", console=console):
            order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
            for kind in order:
                path, body, first = kinds[kind]
                samples[kind].append(timed(client, path, body, first))
    results = {}
    for kind, values in samples.items():
        ttft = [t * 1000 for t, _ in values]
        whole = [w * 1000 for _, w in values]
        results[kind] = {
            "ttft_p50_ms": statistics.median(ttft),
            "ttft_p90_ms": percentile(ttft, 90),
            "e2e_p50_ms": statistics.median(whole),
        }
    chat = results["chat"]
    for r in results.values():
        r["ttft_p50_added_ms"] = r["ttft_p50_ms"] - chat["ttft_p50_ms"]
        r["e2e_p50_added_ms"] = r["e2e_p50_ms"] - chat["e2e_p50_ms"]
    save_json(args.out, {"pairs": args.pairs, "results": results})
    print_table(
        ["route", "TTFT p50 ms", "TTFT p90 ms", "added TTFT p50 ms", "whole p50 ms", "added whole p50 ms"],
        [
            [
                k,
                f"{r['ttft_p50_ms']:.2f}",
                f"{r['ttft_p90_ms']:.2f}",
                f"{r['ttft_p50_added_ms']:+.2f}",
                f"{r['e2e_p50_ms']:.2f}",
                f"{r['e2e_p50_added_ms']:+.2f}",
            ]
            for k, r in results.items()
        ],
    )
    figure = Path(args.out).with_suffix(".png")
    plot(samples, figure)
    console.print(f"wrote {args.out} and {figure}")


def plot(samples: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """Each route's TTFT distribution (ms), side by side."""
    from loadtest.plots import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(samples)
    ax.boxplot([[t * 1000 for t, _ in samples[k]] for k in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("TTFT, ms")
    ax.set_title("time to first text delta: chat completions and responses")
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
