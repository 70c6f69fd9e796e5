"""The most prompt lookup could make of an answer on these kernels: the ceiling under
issue 23's copy-heavy goal (at least 1.5x llama-server with its n-gram speculation).

For each workload of benchmarks/batched_speculation.py, its concurrency-1 prompts are
answered once, alone, greedy, by Lightgate's llamacpp backend with `speculate: ngram`
(so the step costs below are the scheduler's own table, calibrated at start and
measured on every step after), timing each prompt's first token. Then each answer
is decoded again on paper, alone, as the batcher would: prompt lookup over the prompt
and the answer so far (`Lookup`, as the scheduler keeps it, following a copy through
its consistent changes) proposes a draft, and an oracle prices it, drafting exactly
the tokens that would be kept (none where lookup is wrong; fewer where a shorter
step yields more tokens a second). No pricing of
lookup's drafts does better on this text with these step costs; a drafter does
better only with tokens that are in neither the prompt nor the answer so far (the
history of answers, for a request sent again).

    ceiling tokens/s = answer tokens / (first-token times + the oracle's steps)

Beside it, in the same run, the peer: llama-server (4 slots, `-t 2`) with no
speculation and each of its n-gram modes, on the same prompts one at a time, before
Lightgate's answers and again after them (so drift in the machine's speed falls on
both sides), tokens and seconds pooled; its best mode per workload is the peer.

    .venv/bin/python -m benchmarks.lookup_ceiling --llama-server .cache/llama-server/bin/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from backends.base import GenerationRequest, SamplingParams
from backends.llamacpp.backend import LlamaCppBackend
from backends.lookup import Lookup, StepCost
from benchmarks.batched_speculation import SLOTS, VARIANTS, code_edits, continuations, load, rag
from benchmarks.common import print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server_process

WORKLOADS = {"code edits": (code_edits, 400), "RAG quotes": (rag, 300), "WikiText continuations": (continuations, 128)}
DRAFT_MAX = 64  # the scheduler's default `speculate_max`
console = Console(stderr=True)


def oracle(prompt: list[int], answer: list[int], cost: StepCost) -> tuple[float, int, int]:
    """(seconds, steps, tokens drafted and kept) to decode `answer` after its first
    token, alone, with lookup's drafts priced by an oracle. A step's rows are the last
    token and the draft; it yields the drafts kept and one token more."""
    lookup = Lookup(prompt + answer[:1], substitutions=True)
    i, seconds, steps, kept_total = 1, 0.0, 0, 0
    while i < len(answer):
        at, length = lookup.match()
        proposal = lookup.draft(at, min(DRAFT_MAX, len(answer) - i - 1)) if length else []
        kept = next((j for j, (a, b) in enumerate(zip(proposal, answer[i:], strict=False)) if a != b), len(proposal))
        sizes = [k for k in range(kept + 1) if k == 0 or cost.measured(1 + k) is not None]
        k = max(sizes, key=lambda k: (k + 1) / cost.cost(1 + k))
        seconds += cost.cost(1 + k)
        lookup.extend(answer[i : i + k + 1])
        i, steps, kept_total = i + k + 1, steps + 1, kept_total + k
    return seconds, steps, kept_total


async def answer(backend: LlamaCppBackend, prompt: list[int], max_tokens: int) -> tuple[list[int], float]:
    """The greedy answer and the seconds to its first token."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    tokens: list[int] = []
    first = 0.0
    started = time.perf_counter()
    async for chunk in backend.generate(GenerationRequest("ceiling", prompt, params)):
        if not tokens and chunk.token_ids:
            first = time.perf_counter() - started
        tokens += chunk.token_ids
    return tokens, first


async def run(variant: str, n: int) -> tuple[dict[str, list[tuple[list[int], list[int], float]]], StepCost]:
    backend = LlamaCppBackend(str(resolve(variant)), n_ctx=2048, n_parallel=4, n_threads=2, speculate="ngram")
    await backend.start()
    answers: dict[str, list[tuple[list[int], list[int], float]]] = {}
    with Progress(console=console) as progress:
        task = progress.add_task("answers", total=n * len(WORKLOADS))
        for name, (make, max_tokens) in WORKLOADS.items():
            for text in make(3 * n, variant)[:n]:  # the concurrency-1 prompts of batched_speculation
                prompt = backend.tokenize(text)
                tokens, first = await answer(backend, prompt, max_tokens)
                answers.setdefault(name, []).append((prompt, tokens, first))
                progress.advance(task)
    cost = backend.step_cost  # what its steps cost on this machine, as it priced its own drafts
    assert cost is not None
    await backend.stop()
    return answers, cost


def peers(llama_server: str, variant: str, n: int, modes: list[str]) -> dict[str, dict[str, float]]:
    """Each mode's output tokens and seconds per workload, the c1 prompts one at a time."""
    figures: dict[str, dict[str, float]] = {}
    for mode in modes:
        port = free_port()
        cmd = [llama_server, "-m", str(resolve(variant)), "--port", str(port), "-np", str(SLOTS)]
        cmd += ["-c", str(SLOTS * 2048), "-t", "2", "--no-webui", *(["--spec-type", mode] if mode != "none" else [])]
        with server_process(cmd, port, "/health") as (base, _pid):
            for name, (make, max_tokens) in WORKLOADS.items():
                run = asyncio.run(load(base, make(3 * n, variant)[:n], 1, max_tokens))
                mine = figures.setdefault(f"{mode}: {name}", {"tokens": 0.0, "wall_s": 0.0})
                mine["tokens"] += run["tokens"]
                mine["wall_s"] += run["wall_s"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(VARIANTS), default="qwen0.5b")
    parser.add_argument(
        "--variant", help="a catalog variant in place of --model's (a `models build-gguf` one); names --out, --plot"
    )
    parser.add_argument("--prompts", type=int, default=4, help="as batched_speculation's --prompts")
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--modes", default="none,ngram-simple,ngram-map-k,ngram-mod", help="llama-server's")
    parser.add_argument("--out", default="bench-results/lookup_ceiling-{model}.json")
    parser.add_argument("--plot", default="docs/figures/lookup-ceiling-{model}.png")
    args = parser.parse_args()
    label = args.variant or args.model  # what {model} in --out and --plot stands for
    variant, modes = args.variant or VARIANTS[args.model], args.modes.split(",")
    before = peers(args.llama_server, variant, args.prompts, modes)
    answers, cost = asyncio.run(run(variant, args.prompts))
    after = peers(args.llama_server, variant, args.prompts, modes)
    pooled = {
        k: (before[k]["tokens"] + after[k]["tokens"]) / (before[k]["wall_s"] + after[k]["wall_s"]) for k in before
    }
    peer, best_mode = {}, {}
    for name in WORKLOADS:
        best_mode[name] = max(modes, key=lambda m: pooled[f"{m}: {name}"])
        peer[name] = pooled[f"{best_mode[name]}: {name}"]
    rows, out = [], {}
    for name, done in answers.items():
        tokens = sum(len(a) for _, a, _ in done)
        first = sum(f for _, _, f in done)
        paper = [oracle(p, a, cost) for p, a, _ in done]
        seconds = first + sum(s for s, _, _ in paper)
        kept = sum(k for _, _, k in paper)
        plain = first + sum((len(a) - 1) * cost.cost(1) for _, a, _ in done)
        ceiling = tokens / seconds
        best = peer[name]
        out[name] = {"tokens": tokens, "first_token_s": first, "kept": kept, "ceiling_tokens_per_s": ceiling}
        out[name] |= {"peer": best_mode[name], "peer_tokens_per_s": best}
        rows.append(
            [
                name,
                str(tokens),
                f"{first:.2f}",
                f"{kept / max(1, tokens - len(done)):.0%}",
                f"{tokens / plain:.1f}",
                f"{ceiling:.1f}",
                f"{best:.1f} ({best_mode[name]})",
                f"{ceiling / best:.2f}",
            ]
        )
    steps = {rows_: f"{cost.times[rows_] * 1000:.0f}" for rows_ in sorted(cost.times)}
    console.print("step ms by rows: " + ", ".join(f"{r}: {ms}" for r, ms in steps.items()))
    columns = ["workload, c1", "answer tokens", "first tokens, s", "drafted and kept", "no drafts, tok/s"]
    columns += ["ceiling, tok/s", "best peer, tok/s (mode)", "ceiling / best peer"]
    print_table(columns, rows)
    save_json(args.out.format(model=label), {"workloads": out, "step_ms": steps, "peers": pooled})
    plot(out, pooled, variant, Path(args.plot.format(model=label)))


def plot(out: dict[str, dict[str, Any]], peers: dict[str, float], variant: str, path: Path) -> None:
    """Per workload: llama-server's modes beside the ceiling of lookup's drafts."""
    from loadtest.plots import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    modes = list(dict.fromkeys(key.split(": ", 1)[0] for key in peers))
    bars = [*(f"llama-server, {m}" for m in modes), "lookup's ceiling (oracle pricing)"]
    width = 0.8 / len(bars)
    for i, bar in enumerate(bars):
        heights = [out[w]["ceiling_tokens_per_s"] if i == len(modes) else peers[f"{modes[i]}: {w}"] for w in out]
        ax.bar([k + i * width for k in range(len(out))], heights, width, label=bar)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(out))], [f"{w}, c1" for w in out])
    ax.set_ylabel("output tokens/s")
    ax.legend(fontsize=7)
    fig.suptitle(f"The most prompt lookup could make of {variant}'s answers, beside llama-server", fontsize=9)
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
