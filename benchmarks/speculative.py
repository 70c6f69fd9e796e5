"""Speculative decoding against the target alone, on the same engine, with the
physics that predicts it.

    python benchmarks/speculative.py [--rounds 3] [--tokens 128]

One gateway serves Qwen2.5-Coder-1.5B Q4_K_M alone (llamacpp backend, one slot)
and through the speculative backend: the 0.5B as the draft at fixed γ and with
adaptive γ, and prompt lookup. Two greedy workloads: WikiText-2 text continued,
and a code edit whose answer repeats its input (the case prompt lookup is for).
Rounds interleave the models; the table shows medians.

The prediction: with c_t(n) the time of one target decode over n tokens, c_d the
time of one draft token (both measured here on llama.cpp's low-level API, 2
threads) and τ the measured mean tokens emitted per step (accepted + 1), a step
of γ drafts yields τ tokens for γ·c_d + c_t(γ+1), where the target alone yields
one per c_t(1): speedup = τ·c_t(1) / (γ·c_d + c_t(γ+1)). Rates are decode rates,
first token to last of a stream (the prefill is the same work with or without a
draft)."""

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
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import free_port, lightgate_config, server
from compressed_models.catalog import resolve
from loadtest.prompts import WIKITEXT

TARGET, DRAFT = "qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"
CODE = """def load_orders(path):
    orders = []
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) != 4:
                continue
            order_id, customer, amount, status = fields
            orders.append({"id": order_id, "customer": customer, "amount": float(amount), "status": status})
    return orders


def total_by_customer(orders):
    totals = {}
    for order in orders:
        if order["status"] != "paid":
            continue
        totals[order["customer"]] = totals.get(order["customer"], 0.0) + order["amount"]
    return totals
"""
EDIT = f"Rename the function total_by_customer to paid_totals. Reply with the whole file, nothing else.\n\n{CODE}"


def step_costs(threads: int, n_max: int) -> dict[str, Any]:
    """c_t(n) for n = 1..n_max and c_d(1), medians of repeated decodes after a prompt."""

    from backends.llamacpp.engine import EngineConfig, LlamaEngine

    def timed(path: str, sizes: list[int]) -> dict[int, float]:
        e = LlamaEngine(EngineConfig(path, 1024, 512, 1, threads, threads, 0, True, None, False))
        prompt = e.tokenize(" ".join(WIKITEXT.read_text().split()[:150]))[:128]
        e.decode(prompt, list(range(len(prompt))), [0] * len(prompt), [False] * (len(prompt) - 1) + [True])
        out = {}
        for n in sizes:
            runs = []
            for _ in range(7):
                tokens = prompt[:n]  # any tokens: a decode costs the same
                started = time.perf_counter()
                e.decode(tokens, list(range(len(prompt), len(prompt) + n)), [0] * n, [True] * n)
                runs.append(time.perf_counter() - started)
                e.free_sequence(0, len(prompt))
            out[n] = statistics.median(runs)
        e.close()
        return out

    target = timed(str(resolve(TARGET)), list(range(1, n_max + 1)))
    draft = timed(str(resolve(DRAFT)), [1])
    return {"target_s": target, "draft_s": draft[1]}


def models(threads: int) -> list[dict[str, Any]]:
    target, draft = str(resolve(TARGET)), str(resolve(DRAFT))
    base = {"n_ctx": 1024, "n_threads": threads}
    spec = {"path": target, "backend": "speculative"}
    return [
        {"name": "target", "backend": "llamacpp", "path": target, "options": {**base, "n_parallel": 1}},
        {"name": "draft γ=2", **spec, "options": {**base, "draft": draft, "gamma": 2, "adaptive": False}},
        {"name": "draft γ=4", **spec, "options": {**base, "draft": draft, "gamma": 4, "adaptive": False}},
        {"name": "draft adaptive", **spec, "options": {**base, "draft": draft}},
        {"name": "lookup γ=4", **spec, "options": {**base, "draft": "ngram", "gamma": 4, "adaptive": False}},
        {"name": "lookup adaptive", **spec, "options": {**base, "draft": "ngram"}},
    ]


def spec_counters(base: str, model: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("lightgate_spec_decode_") and f'model="{model}"' in line:
            out[line.split("{")[0].removeprefix("lightgate_spec_decode_").removesuffix("_total")] = float(
                line.rsplit(" ", 1)[1]
            )
    return out


def one(client: httpx.Client, model: str, workload: str, tokens: int) -> tuple[int, float]:
    """One streamed greedy request: (tokens after the first, seconds from the first
    to the last), the decode rate without the prefill (which drafting does not touch)."""
    if workload == "text":
        prompt = " ".join(WIKITEXT.read_text().split()[300:420])
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": tokens, "ignore_eos": True}
        path = "/v1/completions"
    else:
        body = {"messages": [{"role": "user", "content": EDIT}], "max_tokens": tokens * 2}
        path = "/v1/chat/completions"
    body |= {"model": model, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    first = last = 0.0
    used = 0
    with client.stream("POST", path, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                used = int(event["usage"]["completion_tokens"])
            if event.get("choices"):
                now = time.perf_counter()
                first = first or now
                last = now
    return used - 1, last - first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results/speculative.json"))
    args = parser.parse_args()
    console = Console()
    with console.status("measuring step costs on the low-level API"):
        physics = step_costs(args.threads, 5)
    specs = models(args.threads)
    port = free_port()
    config = lightgate_config(specs)
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    runs: dict[tuple[str, str], list[tuple[int, float]]] = {}
    counters: dict[tuple[str, str], dict[str, float]] = {}
    with server(cmd, port, "/ready") as base, httpx.Client(base_url=base, timeout=600) as client:
        for m in specs:  # warm-up
            one(client, m["name"], "text", 8)
        with Progress(console=console) as progress:
            task = progress.add_task("speculative", total=args.rounds * len(specs) * 2)
            for _ in range(args.rounds):
                for workload in ("text", "code edit"):
                    for m in specs:
                        before = spec_counters(base, m["name"])
                        runs.setdefault((m["name"], workload), []).append(one(client, m["name"], workload, args.tokens))
                        after = spec_counters(base, m["name"])
                        total = counters.setdefault((m["name"], workload), {})
                        for key, value in after.items():
                            total[key] = total.get(key, 0.0) + value - before.get(key, 0.0)
                        progress.advance(task)
    rows = []
    for (name, workload), measured in runs.items():
        rate = statistics.median(n / s for n, s in measured)
        alone = statistics.median(n / s for n, s in runs[("target", workload)])
        c = counters[(name, workload)]
        steps, drafted, kept = c.get("drafts", 0), c.get("draft_tokens", 0), c.get("accepted_tokens", 0)
        row: dict[str, Any] = {"model": name, "workload": workload, "tok_s": rate, "speedup": rate / alone}
        if steps:
            row.update(alpha=kept / drafted, tokens_per_step=(kept + steps) / steps)
            gamma = next((m["options"].get("gamma") for m in specs if m["name"] == name), None)
            if name.endswith(("γ=2", "γ=4")) and gamma:
                c_d = physics["draft_s"] if name.startswith("draft") else 0.0
                t = physics["target_s"]
                row["predicted"] = row["tokens_per_step"] * t[1] / (gamma * c_d + t[gamma + 1])
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"physics": physics, "rows": rows}, indent=1))
    t = physics["target_s"]
    print("step costs (ms): target " + ", ".join(f"{n} tok {s * 1000:.0f}" for n, s in t.items()), end="")
    print(f"; draft 1 tok {physics['draft_s'] * 1000:.0f}")
    print("\n| drafting | workload | tok/s | vs target alone | α | tokens per step | predicted speedup |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        alpha = f"{r['alpha']:.2f}" if "alpha" in r else "-"
        tps = f"{r['tokens_per_step']:.2f}" if "tokens_per_step" in r else "-"
        pred = f"{r['predicted']:.2f}" if "predicted" in r else "-"
        print(f"| {r['model']} | {r['workload']} | {r['tok_s']:.1f} | {r['speedup']:.2f} | {alpha} | {tps} | {pred} |")


if __name__ == "__main__":
    main()
