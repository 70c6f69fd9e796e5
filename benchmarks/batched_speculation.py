"""Prompt-lookup speculation inside the continuous batcher, beside llama.cpp's own
server with its own n-gram speculation, same GGUF, same threads, in one run (issue 23).

Workloads (completions, greedy, the answers' first words given, as applications that
prefill an answer do):
- code edits: a function of the standard library (docstring dropped, 300-500 tokens)
  returned renamed: the model copies the body;
- RAG answers: a ~300-token WikiText-2 passage quoted back;
- WikiText continuations: nothing to copy (speculation must cost nothing there).
Each at concurrency 1 and 4, with prompts of their own (no prompt of one set is in
another, nor the warm-up's: a server that remembers earlier answers, as llama-server's
ngram-mod and Lightgate's history do, would otherwise draft them); then the WikiText
continuations of concurrency 4 sent again, which is what such a memory is for (a
retry, a regenerate, another user with the same question). Output tokens/s over
the run; with `--repeats`, every server that many times, interleaved, in reverse
order every other time (so drift and position fall on every server alike), tokens
and seconds summed over the repeats.

Servers: llama-server without speculation and with each of its n-gram modes (its
best is the peer), 4 slots, `-t 2`; Lightgate's llamacpp backend with and without
`speculate: ngram` (in one KV stream, its default, and with a stream per slot, with
and without flash attention: without it, steps of a few rows a sequence at long
contexts cost less, see benchmarks/kv_layout.py). And
a ceiling: Lightgate with every answer known in advance, which no drafter beats on
these kernels. It runs each batch twice and is timed the second time, its prefix
cache off so every prompt is computed again: its history then drafts each answer
whole from the first token on (the same greedy answer, but where batched
verification breaks a near-tie). What is left is the prompt's compute and the
verification steps' cost, which a goal beside the peer must fit under.

The model: Qwen2.5-Coder-0.5B (Q4_K_M) by default, which does copy: it returns the
function renamed. SmolLM2-135M (`--model smollm2`) does not: greedy, it falls into a
loop of a few tokens within a line or two, so its "copy" workloads measure drafting
round a loop, not a copy.

    .venv/bin/python -m benchmarks.batched_speculation \
        --llama-server .cache/llama-server/bin/llama-server [--model smollm2]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import difflib
import inspect
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

from benchmarks.common import baseline_env, lightgate_config, print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.client import Client
from leanhttp.local import free_port, server_process
from loadtest.client import Prompt, RequestSpec, send
from loadtest.prompts import wikitext
from loadtest.server_metrics import scrape

VARIANTS = {"qwen0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m", "smollm2": "smollm2-135m-instruct-q4_1"}
MODEL = "model"  # the served name, on every server
SLOTS = 4
console = Console(stderr=True)


def functions(count: int, variant: str) -> list[str]:
    """Functions of the standard library without their docstrings, 300-500 tokens: code
    nobody wrote for this benchmark, the same on every machine with this Python."""
    import configparser
    import tarfile
    import zipfile

    from backends.llamacpp.engine import LlamaVocab

    vocab = LlamaVocab(str(resolve(variant)))
    sources = []
    for module in (difflib, textwrap, shutil, configparser, tarfile, zipfile):
        for _, member in sorted(inspect.getmembers(module)):
            for _, fn in sorted(inspect.getmembers(member, inspect.isfunction)) if inspect.isclass(member) else []:
                if fn.__module__ != module.__name__:
                    continue
                tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
                node = tree.body[0]
                assert isinstance(node, ast.FunctionDef)
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(node.body) > 1:
                    node.body = node.body[1:]
                source = ast.unparse(tree)
                if 300 <= len(vocab.tokenize(source)) <= 500 and source not in sources:
                    sources.append(source)
    vocab.close()
    return sources[:: max(1, len(sources) // count)][:count]


def code_edits(count: int, variant: str) -> list[str]:
    prompts = []
    for source in functions(count, variant):
        name = source.split("def ", 1)[1].split("(", 1)[0]
        prompts.append(
            f"Rename the function `{name}` to `renamed` and change nothing else.\n\n```python\n{source}\n```\n\n"
            f"The same code, with the function renamed:\n\n```python\ndef renamed("
        )
    return prompts


def rag(count: int, variant: str) -> list[str]:
    passages = [p.text for p in wikitext(230, seed=5, count=count).prompts]
    return [
        f"Passage: {p}\n\nQuestion: What does the passage say? Quote it word for word.\n\n"
        f'Answer: The passage says: "{" ".join(p.split()[:6])}'
        for p in passages
    ]


def continuations(count: int, variant: str = "") -> list[str]:
    return [p.text for p in wikitext(60, seed=6, count=count).prompts]


async def load(base: str, prompts: list[str], users: int, max_tokens: int) -> dict[str, float]:
    """`users` clients, each taking the next prompt until none is left."""
    spec = RequestSpec(model=MODEL, max_tokens=max_tokens, ignore_eos=False, temperature=0.0)
    client = Client(base, timeout_s=600)
    todo = list(enumerate(prompts))
    tokens = 0
    failed = 0
    t0 = time.perf_counter()

    async def user() -> None:
        nonlocal tokens, failed
        while todo:
            i, text = todo.pop(0)
            r = await send(client, spec, Prompt(text), i, t0)
            if r.ok:
                tokens += r.tokens
            else:
                failed += 1

    await asyncio.gather(*(user() for _ in range(users)))
    wall = time.perf_counter() - t0
    client.close()
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "failed": failed}


def add(figures: dict[str, dict[str, Any]], key: str, run: dict[str, float]) -> None:
    """One repeat's run into a server's figures: tokens and seconds summed, each
    repeat's tokens/s kept."""
    total = figures.setdefault(key, {"tokens": 0, "wall_s": 0.0, "failed": 0, "repeats_tokens_per_s": []})
    for field in ("tokens", "wall_s", "failed"):
        total[field] += run[field]
    total["tokens_per_s"] = total["tokens"] / total["wall_s"]
    total["repeats_tokens_per_s"].append(run["tokens_per_s"])


def lightgate(variant: str, options: dict[str, Any]) -> tuple[list[str], int]:
    port = free_port()
    opts = {"n_ctx": 2048, "n_parallel": SLOTS, "n_threads": 2, **options}
    config = lightgate_config([{"name": MODEL, "backend": "llamacpp", "variant": variant, "options": opts}])
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)], port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", choices=sorted(VARIANTS), default="qwen0.5b")
    parser.add_argument(
        "--variant", help="a catalog variant in place of --model's (a `models build-gguf` one); names --out, --plot"
    )
    parser.add_argument(
        "--modes",
        default="ngram-simple,ngram-map-k,ngram-mod",
        help="llama-server's n-gram modes (none: no speculation); MODE:unified with --kv-unified",
    )
    parser.add_argument("--prompts", type=int, default=4, help="prompts per workload at concurrency 1 (x2 at 4)")
    parser.add_argument("--repeats", type=int, default=1, help="run every server this many times, interleaved")
    parser.add_argument("--workloads", help="only these workloads, comma-separated (default: all three)")
    parser.add_argument("--servers", help="only servers whose name contains one of these, comma-separated")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="another checkout (a git worktree of an earlier commit): its `speculate: ngram` beside this one's",
    )
    parser.add_argument("--out", default="bench-results/batched_speculation-{model}.json")
    parser.add_argument("--plot", default="docs/figures/batched-speculation-{model}.png")
    args = parser.parse_args()
    label = args.variant or args.model  # what {model} in --out and --plot stands for
    variant = args.variant or VARIANTS[args.model]
    gguf = str(resolve(variant))
    n = args.prompts
    workloads: dict[str, tuple[Callable[[int, str], list[str]], int]] = {
        "code edits": (code_edits, 400),
        "RAG quotes": (rag, 300),
        "WikiText continuations": (continuations, 128),
    }
    if args.workloads:
        unknown = set(args.workloads.split(",")) - set(workloads)
        if unknown:
            parser.error(f"--workloads: no {', '.join(sorted(unknown))}; there are {', '.join(workloads)}")
        workloads = {name: workloads[name] for name in args.workloads.split(",")}
    prompts = {name: make(3 * n, variant) for name, (make, _) in workloads.items()}
    sets = {1: slice(0, n), SLOTS: slice(n, 3 * n)}  # each concurrency its own prompts
    again = "WikiText continuations"

    def peer(mode: str | None) -> tuple[str, list[str], int, str, dict[str, str]]:
        """llama-server in `mode` (an n-gram mode, or none); "MODE:unified" with one KV
        stream for its slots (--kv-unified), where a drafting slot's rows do not split
        the step into another weight pass."""
        port = free_port()
        cmd = [args.llama_server, "-m", gguf, "--port", str(port), "-np", str(SLOTS), "-c", str(SLOTS * 2048)]
        cmd += ["-t", "2", "--no-webui"]
        spec, _, kv = (mode or "none").partition(":")
        if spec != "none":
            cmd += ["--spec-type", spec]
        if kv == "unified":
            cmd += ["--kv-unified"]
        name = "no speculation" if spec == "none" else spec
        return (f"llama-server, {name}" + (", kv-unified" if kv else ""), cmd, port, "/health", {})

    # Without speculation always, first; a mode named twice (or "none") runs once, as
    # two servers of one name would pool their repeats.
    servers = list({s[0]: s for s in map(peer, [None, *args.modes.split(",")])}.values())
    ceiling = "Lightgate, answers known (ceiling)"
    servers += [
        ("Lightgate, no speculation", *lightgate(variant, {}), "/ready", {}),
        ("Lightgate, speculate: ngram", *lightgate(variant, {"speculate": "ngram"}), "/ready", {}),
        (  # the other KV layout: drafts planned to keep the step's passes few (see backends/lookup.py)
            "Lightgate, a stream per slot, speculate: ngram",
            *lightgate(variant, {"speculate": "ngram", "kv_unified": False}),
            "/ready",
            {},
        ),
        (  # the same, attention without flash: a few rows a sequence at long contexts cost less
            "Lightgate, a stream per slot, flash_attn off, speculate: ngram",
            *lightgate(variant, {"speculate": "ngram", "kv_unified": False, "flash_attn": False}),
            "/ready",
            {},
        ),
        (ceiling, *lightgate(variant, {"speculate": "ngram", "prefix_cache": False}), "/ready", {}),
    ]
    if args.baseline:  # the same server on an earlier checkout's code, in the same run
        env = baseline_env(args.baseline)
        servers.append(
            ("Lightgate@baseline, speculate: ngram", *lightgate(variant, {"speculate": "ngram"}), "/ready", env)
        )
    if args.servers:
        servers = [s for s in servers if any(part in s[0] for part in args.servers.split(","))]
        if not any(name.startswith("llama-server") for name, *_ in servers):
            parser.error("--servers must keep at least one llama-server: the peer every ratio is against")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    drafts: dict[str, dict[str, float]] = {}
    with Progress(console=console) as progress:
        per_server = len(workloads) * 2 + (again in workloads)
        task = progress.add_task("servers x workloads", total=len(servers) * per_server * args.repeats)
        warm_up = [p.text for p in wikitext(60, seed=7, count=2).prompts]  # in no workload
        for repeat in range(args.repeats):
            for name, cmd, port, ready, env in servers if repeat % 2 == 0 else servers[::-1]:
                runs = {}
                with server_process(cmd, port, ready, env) as (base, _pid):
                    asyncio.run(load(base, warm_up, 1, 16))
                    for workload, (_, max_tokens) in workloads.items():
                        for users in (1, SLOTS):
                            batch = prompts[workload][sets[users]]
                            if name == ceiling:  # the answers into its history, untimed
                                asyncio.run(load(base, batch, users, max_tokens))
                            runs[f"{workload}, c{users}"] = asyncio.run(load(base, batch, users, max_tokens))
                            progress.advance(task)
                    if again in workloads:
                        batch, max_tokens = prompts[again][sets[SLOTS]], workloads[again][1]
                        runs[f"{again} again, c{SLOTS}"] = asyncio.run(load(base, batch, SLOTS, max_tokens))
                        progress.advance(task)
                    if "speculate" in name:
                        with httpx.Client(base_url=base) as client:
                            spec = scrape(client, MODEL) or {}
                        mine = drafts.setdefault(name, {"draft_tokens": 0.0, "accepted_tokens": 0.0})
                        mine["draft_tokens"] += spec.get("lightgate_spec_decode_draft_tokens_total", 0.0)
                        mine["accepted_tokens"] += spec.get("lightgate_spec_decode_accepted_tokens_total", 0.0)
                for key, run in runs.items():
                    add(results.setdefault(name, {}), key, run)
        for name, mine in drafts.items():
            console.print(f"{name}: {mine['accepted_tokens']:.0f} of {mine['draft_tokens']:.0f} draft tokens kept")
    keys = [f"{w}, c{u}" for w in workloads for u in (1, SLOTS)]
    keys += [f"{again} again, c{SLOTS}"] if again in workloads else []
    peers = [s for s in results if s.startswith("llama-server")]
    known = results.get(ceiling)
    best_peer = {k: max(peers, key=lambda s: results[s][k]["tokens_per_s"]) for k in keys}
    save_json(args.out.format(model=label), {"results": results, "best_peer": best_peer, "drafts": drafts})
    rows = []
    speculating, plain = results.get("Lightgate, speculate: ngram"), results.get("Lightgate, no speculation")

    def ratio(a: dict[str, dict[str, Any]] | None, b: dict[str, dict[str, Any]] | None, k: str) -> str:
        return f"{a[k]['tokens_per_s'] / b[k]['tokens_per_s']:.2f}" if a and b else "-"

    for k in keys:
        bp = results[best_peer[k]]
        by_repeat = "-"
        if speculating:
            pairs = zip(speculating[k]["repeats_tokens_per_s"], bp[k]["repeats_tokens_per_s"], strict=True)
            by_repeat = " ".join(f"{a / b:.2f}" for a, b in pairs)
        rows.append(
            [
                k,
                *(f"{results[s][k]['tokens_per_s']:.1f}" for s in results),
                best_peer[k].removeprefix("llama-server, "),
                ratio(speculating, bp, k),
                by_repeat,
                ratio(speculating, plain, k),
                ratio(known, bp, k),
            ]
        )
    columns = ["workload", *results, "best peer", "ours / best peer", "by repeat", "ours: with / without speculation"]
    columns.append("ceiling / best peer")
    print_table(columns, rows)
    plot(results, keys, variant, Path(args.plot.format(model=label)))


def plot(results: dict[str, dict[str, dict[str, Any]]], keys: list[str], variant: str, path: Path) -> None:
    from loadtest.plots import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(14, 4.5), layout="constrained")
    width = 0.8 / len(results)
    for i, (server, figures) in enumerate(results.items()):
        heights = [figures[k]["tokens_per_s"] for k in keys]
        ax.bar([k + i * width for k in range(len(keys))], heights, width, label=server)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys, fontsize=7)
    ax.set_ylabel("output tokens/s")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, not over them
    fig.suptitle(f"Speculation inside the batcher: {variant}, 2 cores, 4 slots, beside llama-server")
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
