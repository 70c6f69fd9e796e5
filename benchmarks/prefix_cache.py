"""The prefix cache on the traffic chat applications send, beside llama.cpp's own
server on the same GGUF, in one run (issue 23).

Two workloads, as chat completions (the GGUF's own template on both servers):
- shared system prompt: 8 users, each sending requests back to back, every request a
  ~1,000-token system prompt (the same for all) and its own ~32-token user turn,
  128-token answers;
- multi-turn chat: 8 users, 6 turns each, every turn the whole conversation so far
  (a ~100-token system prompt, ~100-token user turns, the 128-token answers the
  server gave), growing to ~1,500 tokens.

llama-server runs its best set-up for these: 8 slots of 2,048 cells, unified KV, its
RAM prompt cache and KV-shifting reuse (`--kv-unified --cache-ram 4096 --cache-reuse
256`), 2 threads. Lightgate runs the llamacpp backend's defaults (8 slots of 2,048
cells, one KV stream each, the shared prefix cache), and with one unified stream.

    .venv/bin/python -m benchmarks.prefix_cache --llama-server .cache/llama-server/bin/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

from benchmarks.common import baseline_env, lightgate_config, percentile, print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.client import Client
from leanhttp.local import free_port, server_process
from loadtest.prompts import wikitext
from loadtest.server_metrics import scrape

VARIANT = "smollm2-135m-instruct-q4_1"
MODEL = "smollm2-135m"
USERS = 8
ANSWER = 128
console = Console(stderr=True)


@dataclass
class Turn:
    ttft: float
    e2e: float
    tokens: int
    text: str
    id: str = ""  # the completion's id: the gateway's engine requests are named after it


async def chat(client: Client, messages: list[dict[str, str]], max_tokens: int = ANSWER) -> Turn:
    """One streamed chat completion: time to the first content, the answer and its usage."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    began = time.perf_counter()
    first: list[float] = []
    parts: list[str] = []
    usage: dict[str, int] = {}
    ids: list[str] = []
    pending = b""

    def feed(data: bytes, arrived: float) -> None:
        nonlocal pending
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage.update(event["usage"])
            if not ids and event.get("id"):
                ids.append(event["id"])
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if not first:
                        first.append(arrived)
                    parts.append(content)

    status, error = await client.post("/v1/chat/completions", json.dumps(body).encode(), feed)
    if status != 200 or not first:
        raise RuntimeError(f"HTTP {status}: {error[:200]!r}")
    e2e, text = time.perf_counter() - began, "".join(parts)
    return Turn(first[0] - began, e2e, usage.get("completion_tokens", 0), text, ids[0] if ids else "")


async def shared_system(base: str, system: str, questions: list[str], rounds: int) -> dict[str, Any]:
    client = Client(base, timeout_s=600)
    turns: list[tuple[int, Turn]] = []
    t0 = time.perf_counter()

    async def user(u: int) -> None:
        for r in range(rounds):
            question = questions[(u * rounds + r) % len(questions)]
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            turns.append((r, await chat(client, messages)))

    await asyncio.gather(*(user(u) for u in range(USERS)))
    wall = time.perf_counter() - t0
    client.close()
    first, later = [t.ttft for r, t in turns if r == 0], [t.ttft for r, t in turns if r > 0]
    return summary([t for _, t in turns], wall) | {
        "ttft_p50_first_wave_s": percentile(first, 50),
        "ttft_p50_later_s": percentile(later, 50),
        "first_wave_s": first,
        "later_s": later,
    }


async def multi_turn(base: str, system: str, user_turns: list[str], turns_each: int) -> dict[str, Any]:
    client = Client(base, timeout_s=600)
    turns: list[tuple[int, Turn]] = []
    t0 = time.perf_counter()

    async def user(u: int) -> None:
        messages = [{"role": "system", "content": system}]
        for k in range(turns_each):
            messages.append({"role": "user", "content": user_turns[(u * turns_each + k) % len(user_turns)]})
            turn = await chat(client, messages)
            messages.append({"role": "assistant", "content": turn.text})
            turns.append((k, turn))

    await asyncio.gather(*(user(u) for u in range(USERS)))
    wall = time.perf_counter() - t0
    client.close()
    last = [t.ttft for k, t in turns if k == turns_each - 1]
    return summary([t for _, t in turns], wall) | {"ttft_p50_last_turn_s": percentile(last, 50), "last_turn_s": last}


def summary(turns: list[Turn], wall: float) -> dict[str, Any]:
    ttft = [t.ttft for t in turns]
    return {
        "ttfts_s": ttft,
        "requests": len(turns),
        "wall_s": wall,
        "output_tokens_per_s": sum(t.tokens for t in turns) / wall,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "e2e_p50_s": percentile([t.e2e for t in turns], 50),
    }


def pooled(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A server's repeats as one: latencies pooled over every request, tokens/s the
    median repeat's, each repeat's TTFT p50 kept. The closed loop's users fall into
    step or out of it from run to run (eight answers that end in one step send eight
    prompts at once), so one run's TTFT p50 is one draw of two modes."""

    def merge(workload: str, lists: dict[str, str]) -> dict[str, Any]:
        parts = [r[workload] for r in runs]
        out: dict[str, Any] = {"output_tokens_per_s": statistics.median(p["output_tokens_per_s"] for p in parts)}
        out["ttft_p50_s"] = percentile([t for p in parts for t in p["ttfts_s"]], 50)
        out["ttft_p99_s"] = percentile([t for p in parts for t in p["ttfts_s"]], 99)
        out["ttft_p50_s_repeats"] = [p["ttft_p50_s"] for p in parts]
        for key, raw in lists.items():
            out[key] = percentile([t for p in parts for t in p[raw]], 50)
        return out

    first = runs[0]
    return {
        "server": name,
        "repeats": len(runs),
        "shared_system": merge(
            "shared_system", {"ttft_p50_first_wave_s": "first_wave_s", "ttft_p50_later_s": "later_s"}
        ),
        "multi_turn": merge("multi_turn", {"ttft_p50_last_turn_s": "last_turn_s"}),
        "hit_rate_shared": first["hit_rate_shared"],
        "hit_rate_all": first["hit_rate_all"],
    }


def lightgate(variant: str, options: dict[str, Any]) -> tuple[list[str], int]:
    port = free_port()
    model = {"name": MODEL, "backend": "llamacpp", "variant": variant, "options": {"n_ctx": 2048, **options}}
    config = lightgate_config([{**model, "max_queue_wait_s": 600}])
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)], port


def peer_command(llama_server: str, variant: str, flash_attn: str = "auto") -> tuple[list[str], int]:
    """llama-server in its best set-up for this traffic (see the module's docstring);
    `flash_attn` its `-fa` (auto: on for a CPU)."""
    port = free_port()
    cmd = [llama_server, "-m", str(resolve(variant)), "--port", str(port), "-np", "8", "-c", str(8 * 2048), "-t", "2"]
    return [*cmd, "--kv-unified", "--cache-ram", "4096", "--cache-reuse", "256", "--jinja", "-fa", flash_attn], port


def hit_rate(base: str) -> float | None:
    """Of the prompt tokens the server was sent since start, those whose KV it reused."""
    with httpx.Client(base_url=base) as client:
        samples = scrape(client, MODEL) or {}
    queries = samples.get("lightgate_prefix_cache_queries_total", 0.0)
    return samples.get("lightgate_prefix_cache_hits_total", 0.0) / queries if queries else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--rounds", type=int, default=3, help="requests per user, shared system prompt")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument(
        "--variant",
        default=VARIANT,
        help="another GGUF of SmolLM2-135M (a `models build-gguf` one), for both servers; names --out and the figure",
    )
    parser.add_argument(
        "--flash-attn-off",
        action="store_true",
        help="add llama-server with -fa off and Lightgate with flash_attn: false (ratios are to the better peer)",
    )
    parser.add_argument("--out", help="default: bench-results/prefix_cache[-VARIANT].json")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="another checkout (a git worktree of an earlier commit), as Lightgate@baseline "
        "(with --flash-attn-off also 'Lightgate, flash_attn off@baseline')",
    )
    parser.add_argument("--servers", nargs="*", help="only these beside llama-server (default: every one)")
    parser.add_argument("--repeats", type=int, default=1, help="run every server this many times, interleaved")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from --out")
    args = parser.parse_args()
    suffix = "" if args.variant == VARIANT else f"-{args.variant}"
    args.out = args.out or f"bench-results/prefix_cache{suffix}.json"
    figure = Path(f"docs/figures/prefix-cache{suffix}.png")
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text()), figure, args.variant)
        return
    system_long = wikitext(700, seed=1, count=1).prompts[0].text  # ~1,000 tokens
    system_short = wikitext(70, seed=2, count=1).prompts[0].text  # ~100 tokens
    questions = [p.text for p in wikitext(22, seed=3, count=64).prompts]  # ~32 tokens
    user_turns = [p.text for p in wikitext(70, seed=4, count=64).prompts]  # ~100 tokens
    servers: list[tuple[str, list[str], int, str, dict[str, str]]] = [
        ("llama-server (best)", *peer_command(args.llama_server, args.variant), "/health", {}),
        ("Lightgate", *lightgate(args.variant, {}), "/ready", {}),
        ("Lightgate, kv_unified", *lightgate(args.variant, {"kv_unified": True}), "/ready", {}),
    ]
    if args.flash_attn_off:  # ggml's CPU flash attention takes a query row at a time: a prompt's rows pay
        peer_off = peer_command(args.llama_server, args.variant, "off")
        servers.insert(1, ("llama-server (best), -fa off", *peer_off, "/health", {}))
        servers.append(("Lightgate, flash_attn off", *lightgate(args.variant, {"flash_attn": False}), "/ready", {}))
    if args.baseline:  # the same set-ups on an earlier checkout's code, in the same run
        env = baseline_env(args.baseline)
        servers.append(("Lightgate@baseline", *lightgate(args.variant, {}), "/ready", env))
        if args.flash_attn_off:
            off = lightgate(args.variant, {"flash_attn": False})
            servers.append(("Lightgate, flash_attn off@baseline", *off, "/ready", env))
    servers = [s for s in servers if s[0].startswith("llama-server") or not args.servers or s[0] in args.servers]
    runs: dict[str, list[dict[str, Any]]] = {}
    with Progress(console=console) as progress:
        task = progress.add_task("servers x workloads", total=2 * len(servers) * args.repeats)
        for repeat in range(args.repeats):  # interleaved: the machine's drift falls on every server alike
            for name, cmd, port, ready, env in servers:
                with server_process(cmd, port, ready, env) as (base, _pid):
                    shared = asyncio.run(shared_system(base, system_long, questions, args.rounds))
                    progress.advance(task)
                    shared_hits = hit_rate(base) if name.startswith("Lightgate") else None
                    turns = asyncio.run(multi_turn(base, system_short, user_turns, args.turns))
                    progress.advance(task)
                    hits = hit_rate(base) if name.startswith("Lightgate") else None
                run = {"server": name, "repeat": repeat, "shared_system": shared, "multi_turn": turns}
                runs.setdefault(name, []).append(run | {"hit_rate_shared": shared_hits, "hit_rate_all": hits})
                save_json(args.out + ".runs", runs)  # as each run ends: a long run keeps what it measured
                console.print(
                    f"{name}, repeat {repeat + 1}: shared TTFT p50 {shared['ttft_p50_s']:.2f} s, "
                    f"multi-turn {turns['ttft_p50_s']:.2f} s"
                )
    results = [pooled(name, rs) for name, rs in runs.items()]
    peers = [r for r in results if r["server"].startswith("llama-server")]

    def best(workload: str, key: str, fn: Callable[..., float]) -> float:
        """The peer's best figure over its set-ups in this run."""
        return fn(p[workload][key] for p in peers)

    ps_ttft, pm_ttft = best("shared_system", "ttft_p50_s", min), best("multi_turn", "ttft_p50_s", min)
    ps_tps = best("shared_system", "output_tokens_per_s", max)
    pm_tps = best("multi_turn", "output_tokens_per_s", max)
    rows = []
    for r in results:
        s, m = r["shared_system"], r["multi_turn"]
        rows.append(
            [
                r["server"],
                f"{s['ttft_p50_s']:.2f} ({s['ttft_p50_s'] / ps_ttft:.2f})",
                f"{s['ttft_p50_first_wave_s']:.2f} / {s['ttft_p50_later_s']:.2f}",
                f"{s['output_tokens_per_s']:.1f} ({s['output_tokens_per_s'] / ps_tps:.2f})",
                f"{m['ttft_p50_s']:.2f} ({m['ttft_p50_s'] / pm_ttft:.2f})",
                f"{m['ttft_p50_last_turn_s']:.2f}",
                f"{m['output_tokens_per_s']:.1f} ({m['output_tokens_per_s'] / pm_tps:.2f})",
                "-" if r["hit_rate_shared"] is None else f"{r['hit_rate_shared']:.2f}",
                " ".join(f"{t:.2f}" for t in s["ttft_p50_s_repeats"])
                + " / "
                + " ".join(f"{t:.2f}" for t in m["ttft_p50_s_repeats"]),
            ]
        )
    print_table(
        [
            "server",
            "shared: TTFT p50 s (to best peer)",
            "shared: first wave / later",
            "shared: out tok/s (to best peer)",
            "multi-turn: TTFT p50 s (to best peer)",
            "multi-turn: last turn TTFT p50",
            "multi-turn: out tok/s (to best peer)",
            "hit rate (shared)",
            "TTFT p50 by repeat: shared / multi-turn",
        ],
        rows,
    )
    save_json(args.out, results)
    plot(results, figure, args.variant)


def plot(results: list[dict[str, Any]], path: Path, variant: str) -> None:
    from loadtest.plots import png, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    names = [r["server"].replace(", ", "\n").replace(" (best)", "\n(best)").replace("@", "\n@") for r in results]
    palette = iter(["#2a7", "#27a", "#a72", "#a27", "#7a2"])
    colors = ["#888" if r["server"].startswith("llama-server") else next(palette) for r in results]
    panels = [
        ("shared_system", ["ttft_p50_first_wave_s", "ttft_p50_later_s"], "shared system prompt: TTFT p50 (s)"),
        ("shared_system", ["output_tokens_per_s"], "shared system prompt: output tok/s"),
        ("multi_turn", ["ttft_p50_s", "ttft_p50_last_turn_s"], "multi-turn chat: TTFT p50 (s)"),
    ]
    for ax, (workload, keys, label) in zip(axes, panels, strict=True):
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(results))]
            alpha = 1.0 if j == 0 else 0.5
            ax.bar(xs, [r[workload][key] for r in results], width, color=colors, alpha=alpha)
        ax.set_xticks(range(len(results)), names)
        subtitle = {1: "", 2: " (left: first wave / all turns; right: later / last turn)"}[len(keys)]
        ax.set_title(label + subtitle, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"Prefix cache: 8 users, {variant}, 2 cores, beside llama-server in one run")
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
