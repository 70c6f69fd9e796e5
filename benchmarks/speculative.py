"""Speculative decoding against the target alone, on the same engine, with the
physics that predicts it.

    python benchmarks/speculative.py [--rounds 3] [--tokens 128]

One gateway serves Qwen2.5-Coder-1.5B Q4_K_M alone (llamacpp backend, one slot)
and through the speculative backend: the 0.5B as the draft at fixed γ and with
adaptive γ, and prompt lookup. Two greedy workloads: WikiText-2 text continued,
and a code edit whose answer repeats its input (the case prompt lookup is for).
Rounds interleave the models; the table shows medians.

Each drafting run follows a run of the target alone, and its speedup is against
that run (the median of the pairs).

The prediction: with c_t(n) the time of one target decode over n tokens, c_d the
time of one draft token and P_d the draft's prefill of the prompt (all measured on
llama.cpp's low-level API, 2 threads, at each workload's context length, once per
round between the runs, so the machine's drift hits both alike) and τ the measured
mean tokens emitted per step (accepted + 1), N tokens take N/τ steps of
γ·c_d + c_t(γ+1) plus P_d (the draft reads the prompt once), where the target
alone takes N·c_t(1): speedup = N·c_t(1) / (P_d + (N/τ)(γ·c_d + c_t(γ+1))). Rates
are decode rates, first token to last of a stream (the target's prefill is the
same with or without a draft; the draft's own is in the window, and counted)."""

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

from benchmarks.common import lightgate_config
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server
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
WORKLOADS = ("text", "code edit")
EDIT = f"Rename the function total_by_customer to paid_totals. Reply with the whole file, nothing else.\n\n{CODE}"


def step_costs(threads: int, contexts: dict[str, tuple[int, int]], n_max: int) -> dict[str, dict[str, Any]]:
    """Per workload: c_t(n) for n = 1..n_max and c_d(1) at that workload's context
    (its prompt plus half the answer), and P_d, the draft's prefill of its prompt;
    medians of repeated decodes (the tokens do not matter to a decode's cost)."""
    from backends.llamacpp.engine import EngineConfig, LlamaEngine

    filler = " ".join(WIKITEXT.read_text().split()[:2000])

    def timed(path: str, sizes: list[int]) -> dict[str, dict[Any, float]]:
        e = LlamaEngine(EngineConfig(path, 1024, 512, 1, threads, threads, 0, True, None, False))
        tokens = e.tokenize(filler)
        out: dict[str, dict[Any, float]] = {}
        for workload, context in contexts.items():
            e.free_sequence(0)
            started = time.perf_counter()
            prompt_len = context[0]
            for offset in range(0, prompt_len, 512):
                chunk = tokens[offset : min(offset + 512, prompt_len)]
                e.decode(chunk, list(range(offset, offset + len(chunk))), [0] * len(chunk), [False] * len(chunk))
            out.setdefault("prefill", {})[workload] = time.perf_counter() - started
            ctx = sum(context)
            e.decode(
                tokens[prompt_len:ctx],
                list(range(prompt_len, ctx)),
                [0] * (ctx - prompt_len),
                [False] * (ctx - prompt_len),
            )
            for n in sizes:
                runs = []
                for _ in range(5):
                    started = time.perf_counter()
                    e.decode(tokens[:n], list(range(ctx, ctx + n)), [0] * n, [True] * n)
                    runs.append(time.perf_counter() - started)
                    e.free_sequence(0, ctx)
                out.setdefault(workload, {})[n] = statistics.median(runs)
        e.close()
        return out

    target = timed(str(resolve(TARGET)), list(range(1, n_max + 1)))
    draft = timed(str(resolve(DRAFT)), [1])
    return {
        w: {"target_s": target[w], "draft_s": draft[w][1], "draft_prefill_s": draft["prefill"][w]} for w in contexts
    }


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


def one(client: httpx.Client, model: str, workload: str, tokens: int) -> tuple[int, float, int]:
    """One streamed greedy request: (tokens after the first, seconds from the first
    to the last, prompt tokens): the decode rate, without the target's prefill."""
    if workload == "text":
        prompt = " ".join(WIKITEXT.read_text().split()[300:420])
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": tokens, "ignore_eos": True}
        path = "/v1/completions"
    else:
        body = {"messages": [{"role": "user", "content": EDIT}], "max_tokens": tokens * 2}
        path = "/v1/chat/completions"
    body |= {"model": model, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    first = last = 0.0
    used = prompt_tokens = 0
    with client.stream("POST", path, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                used = int(event["usage"]["completion_tokens"])
                prompt_tokens = int(event["usage"]["prompt_tokens"])
            if event.get("choices"):
                now = time.perf_counter()
                first = first or now
                last = now
    return used - 1, last - first, prompt_tokens


def predicted(costs: dict[str, Any], model_draft: bool, gamma: int, tau: float, tokens: float) -> float:
    """The speedup the physics allows for `tokens` decoded at τ tokens per step."""
    t = costs["target_s"]
    c_d, prefill = (costs["draft_s"], costs["draft_prefill_s"]) if model_draft else (0.0, 0.0)
    return float(tokens * t[1] / (prefill + tokens / tau * (gamma * c_d + t[gamma + 1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results/speculative.json"))
    args = parser.parse_args()
    console = Console()
    specs = models(args.threads)
    port = free_port()
    config = lightgate_config(specs)
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    runs: dict[tuple[str, str], list[tuple[int, float, int]]] = {}
    counters: dict[tuple[str, str], dict[str, float]] = {}
    physics: list[dict[str, dict[str, Any]]] = []
    with server(cmd, port, "/ready") as base, httpx.Client(base_url=base, timeout=600) as client:
        for m in specs:  # warm-up: two tokens load the engines, too few for adaptive γ to probe yet
            one(client, m["name"], "text", 2)
        # Each workload's context, for the step costs: its prompt plus half its answer.
        contexts = {}
        for workload in WORKLOADS:
            n, _, prompt_tokens = one(client, "target", workload, args.tokens)
            contexts[workload] = (prompt_tokens, (n + 1) // 2)
        with Progress(console=console) as progress:
            task = progress.add_task("speculative", total=args.rounds * ((len(specs) - 1) * 4 + 1))
            for _ in range(args.rounds):
                physics.append(step_costs(args.threads, contexts, 5))
                progress.advance(task)
                for workload in WORKLOADS:
                    # Each drafting run right after a run of the target alone: the pair is
                    # seconds apart, so the machine's drift (tens of percent over a run) hits
                    # both alike.
                    for m in specs[1:]:
                        for name in ("target", m["name"]):
                            before = spec_counters(base, name)
                            runs.setdefault((name, workload), []).append(one(client, name, workload, args.tokens))
                            after = spec_counters(base, name)
                            total = counters.setdefault((name, workload), {})
                            for key, value in after.items():
                                total[key] = total.get(key, 0.0) + value - before.get(key, 0.0)
                            progress.advance(task)
    costs: dict[str, dict[str, Any]] = {
        w: {
            "target_s": {n: statistics.median(p[w]["target_s"][n] for p in physics) for n in range(1, 6)},
            "draft_s": statistics.median(p[w]["draft_s"] for p in physics),
            "draft_prefill_s": statistics.median(p[w]["draft_prefill_s"] for p in physics),
        }
        for w in WORKLOADS
    }
    rows = []
    for (name, workload), measured in runs.items():
        rate = statistics.median(n / s for n, s, _ in measured)
        alone = runs[("target", workload)]
        if name == "target":
            pairs = [1.0] * len(measured)
        else:  # the target's runs paired with this model's, in the order they ran
            index = next(i for i, m in enumerate(specs[1:]) if m["name"] == name)
            mine = alone[index :: len(specs) - 1]
            pairs = [(n / s) / (n0 / s0) for (n, s, _), (n0, s0, _) in zip(measured, mine, strict=True)]
        c = counters[(name, workload)]
        steps, drafted, kept = c.get("drafts", 0), c.get("draft_tokens", 0), c.get("accepted_tokens", 0)
        row: dict[str, Any] = {"model": name, "workload": workload, "tok_s": rate, "speedup": statistics.median(pairs)}
        row["rounds"] = pairs  # each against the target alone run just before it
        if steps:
            row.update(alpha=kept / drafted, tokens_per_step=(kept + steps) / steps)
            gamma = next((m["options"].get("gamma") for m in specs if m["name"] == name), None)
            if name.endswith(("γ=2", "γ=4")) and gamma:
                # Each round's prediction from the costs measured in that round: the
                # machine drifts by tens of percent over a run, a ratio within a round less.
                tokens = statistics.median(n for n, _, _ in measured)
                draft, tau = name.startswith("draft"), row["tokens_per_step"]
                per_round = [predicted(p[workload], draft, gamma, tau, tokens) for p in physics]
                row["predicted"] = statistics.median(per_round)
                row["measured_over_predicted"] = statistics.median(
                    m / p for m, p in zip(row["rounds"], per_round, strict=True)
                )
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"physics": costs, "contexts": contexts, "rows": rows}, indent=1))
    for w, cost in costs.items():
        target = ", ".join(f"{n} tok {s * 1000:.0f}" for n, s in cost["target_s"].items())
        print(
            f"{w} at context {sum(contexts[w])}: target {target} ms; draft 1 tok {cost['draft_s'] * 1000:.0f} ms;",
            end="",
        )
        print(f" draft prefill of the {contexts[w][0]}-token prompt {cost['draft_prefill_s'] * 1000:.0f} ms")
    print("\n| drafting | workload | tok/s | vs target alone | each round | α | tokens per step", end=" ")
    print("| predicted | measured / predicted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        alpha = f"{r['alpha']:.2f}" if "alpha" in r else "-"
        tps = f"{r['tokens_per_step']:.2f}" if "tokens_per_step" in r else "-"
        pred = f"{r['predicted']:.2f} | {r['measured_over_predicted']:.2f}" if "predicted" in r else "- | -"
        each = " / ".join(f"{x:.2f}" for x in r["rounds"])
        figures = f"{r['tok_s']:.1f} | {r['speedup']:.2f} | {each}"
        print(f"| {r['model']} | {r['workload']} | {figures} | {alpha} | {tps} | {pred} |")


if __name__ == "__main__":
    main()
