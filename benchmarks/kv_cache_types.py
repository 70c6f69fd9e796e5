"""KV cell types at concurrency 16: what a quantized KV cache buys when memory, not
compute, bounds the slots. The KV memory of `make serve`'s 8 slots of 2,048 f16 cells
holds 15 slots of q8_0 cells and 28 of q4_0; 16 users then find 8, 15 or 16 slots
(the other users wait). Each type runs with the slots its memory holds, and, where
that is fewer than 16, with 16 too (what its cells cost per token, memory aside). Lightgate's
llama.cpp backend and llama-server, same GGUF, threads, slots and cell types
(`cache_type_k/_v`, `-ctk/-ctv` with flash attention, which a quantized V needs).

    .venv/bin/python -m benchmarks.kv_cache_types --llama-server .cache/llama-server/bin/llama-server

Closed loop, 16 users sending 128-token streams back to back; tokens/s is counted in
a window after a warm-up (benchmarks/batching.py counts whole requests, and with 15
slots for 16 users its last partial wave would weigh on the figure)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.progress import Progress

from backends.llamacpp.engine import LlamaVocab
from benchmarks.batching import Server, _has_text, console
from benchmarks.common import lightgate_config, percentile, print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server

MODELS = {"smollm2": "smollm2-135m-instruct-q4_1", "qwen0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m"}
TYPES = ("f16", "q8_0", "q4_0")
N_CTX, F16_SLOTS = 2048, 8  # make serve's: the KV memory every type gets


def slots_in_memory(path: str, cache_type: str, most: int) -> int:
    """How many slots of N_CTX cells of `cache_type` fit in the memory of F16_SLOTS f16 ones."""
    vocab = LlamaVocab(path)
    try:
        f16, cell = vocab.kv_cell_bytes("f16", "f16"), vocab.kv_cell_bytes(cache_type, cache_type)
    finally:
        vocab.close()
    return min(most, F16_SLOTS * f16 // cell)


def commands(path: str, cache_type: str, slots: int, threads: int, llama_server: str | None) -> dict[str, Server]:
    """name -> how to start it: the same GGUF, threads, slots and cell types."""
    options = {
        "n_ctx": N_CTX,
        "n_parallel": slots,
        "n_threads": threads,
        "cache_type_k": cache_type,
        "cache_type_v": cache_type,
        "flash_attn": True,
    }
    port = free_port()
    config = lightgate_config([{"name": "m", "backend": "llamacpp", "path": path, "options": options}])
    out: dict[str, Server] = {
        "lightgate": (
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
            port,
            "/ready",
            {},
        )
    }
    if llama_server:
        port = free_port()
        cmd = [llama_server, "-m", path, "--port", str(port), "-np", str(slots), "-c", str(N_CTX * slots)]
        cmd += ["-t", str(threads), "-tb", str(threads), "-ctk", cache_type, "-ctv", cache_type, "-fa", "on"]
        out["llama-server"] = ([*cmd, "--alias", "m"], port, "/health", {})
    return out


@dataclass
class Window:
    """What 16 users got in the measured window: every token's arrival, each request's TTFT."""

    stamps: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    failed: int = 0  # streams broken after their first token


async def steady_state(base: str, users: int, tokens: int, warm_s: float, measure_s: float, tag: str) -> Window:
    """Closed loop for warm_s + measure_s seconds, every user sending 128-token
    streams back to back. Counted: the tokens that arrive in the last measure_s
    seconds, so neither the cold start nor a last partial wave (15 slots, 16 users,
    a whole number of requests) weighs on the figure."""
    seen = Window()
    began = time.perf_counter()
    opens, deadline = began + warm_s, began + warm_s + measure_s
    limits = httpx.Limits(max_connections=users + 4)
    async with httpx.AsyncClient(base_url=base, timeout=120.0, limits=limits) as client:

        async def user(u: int) -> None:
            for i in itertools.count():
                if time.perf_counter() >= deadline:
                    return
                body = {
                    "model": "m",
                    "prompt": f"Story {tag}{u}-{i}: once upon a time, in a land far away,",
                    "max_tokens": tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                    "stream": True,
                }
                sent, first = time.perf_counter(), 0.0
                try:
                    async with client.stream("POST", "/v1/completions", json=body) as r:
                        async for line in r.aiter_lines():
                            if line.startswith("data: {") and _has_text(line):
                                now = time.perf_counter()
                                seen.stamps.append(now)
                                first = first or now
                                if now >= deadline:
                                    break  # leaves the stream: the server frees the slot
                except httpx.RemoteProtocolError:
                    # A kept-alive connection the server had closed as it was reused:
                    # the request never reached it. The user sends the next one.
                    seen.failed += 1 if first else 0
                    continue
                if first and sent >= opens:
                    seen.ttft_s.append(first - sent)

        await asyncio.gather(*(user(u) for u in range(users)))
    seen.stamps = [t for t in seen.stamps if opens <= t < deadline]
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"], choices=list(MODELS))
    parser.add_argument("--llama-server", help="path of a llama-server binary (the peer)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warm-s", type=float, default=10.0, help="seconds of load before the window opens")
    parser.add_argument("--measure-s", type=float, default=40.0, help="seconds of the window")
    parser.add_argument("--out", default="bench-results/kv_cache_types.json")
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    for short in args.models:
        path = str(resolve(MODELS[short]))
        runs = []
        for cache_type in TYPES:
            fit = slots_in_memory(path, cache_type, args.concurrency)
            runs.append((cache_type, fit, "its KV memory" if fit < args.concurrency else "its KV memory, every user"))
            if fit < args.concurrency:
                runs.append((cache_type, args.concurrency, "every user"))
        with Progress(console=console) as progress:
            task = progress.add_task(short, total=len(runs) * (2 if args.llama_server else 1))
            for cache_type, slots, memory in runs:
                for name, (cmd, port, ready, env) in commands(
                    path, cache_type, slots, args.threads, args.llama_server
                ).items():
                    with server(cmd, port, ready, env) as base:
                        tag = f"{cache_type}-{slots} "
                        got = asyncio.run(
                            steady_state(base, args.concurrency, args.tokens, args.warm_s, args.measure_s, tag)
                        )
                    results.append(
                        {
                            "model": short,
                            "server": name,
                            "cache_type": cache_type,
                            "slots": slots,
                            "slots_from": memory,
                            "output_tok_s": len(got.stamps) / args.measure_s,
                            "ttft_ms_p50": percentile(got.ttft_s, 50) * 1000,
                            "ttft_ms_p99": percentile(got.ttft_s, 99) * 1000,
                            "requests_started_in_window": len(got.ttft_s),
                            "failed": got.failed,
                        }
                    )
                    console.print(f"{short} {name} {cache_type} x {slots}: {results[-1]['output_tok_s']:.1f} tok/s")
                    progress.advance(task)
    save_json(args.out, results)
    # The reference: f16 cells in their own memory (make serve's 8 slots).
    f16 = {
        (r["model"], r["server"]): r["output_tok_s"]
        for r in results
        if r["cache_type"] == "f16" and r["slots"] == F16_SLOTS
    }
    rows = []
    for r in results:
        f16_rate = f16.get((r["model"], r["server"])) or float("nan")
        rows.append(
            [
                r["model"],
                r["server"],
                r["cache_type"],
                f"{r['slots']} ({r['slots_from']})",
                f"{r['output_tok_s']:.1f}",
                f"{r['output_tok_s'] / f16_rate:.2f}",
                f"{r['ttft_ms_p50']:.0f} / {r['ttft_ms_p99']:.0f}",
            ]
        )
    print()
    print_table(["model", "server", "KV type", "slots", "tok/s", "to f16 in its memory", "TTFT p50 / p99 ms"], rows)
    peers = {(r["model"], r["cache_type"], r["slots"]): r for r in results if r["server"] == "llama-server"}
    ratios = [
        f"{r['cache_type']} x {r['slots']}: {r['output_tok_s'] / peers[key]['output_tok_s']:.2f}"
        for r in results
        if r["server"] == "lightgate" and (key := (r["model"], r["cache_type"], r["slots"])) in peers
    ]
    if ratios:
        console.print("Lightgate / llama-server: " + ", ".join(ratios))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
