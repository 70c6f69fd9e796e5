"""Prompts that arrive together, beside llama.cpp's own server on the same GGUF, in one
run (issue 23).

Eight chat requests sent at the same instant, each a ~1,000-token system prompt that
the server already holds (one request warms it first) and its own ~32-token user
turn, 32-token answers; `--bursts` such bursts, one after the other. What is left to
compute is each request's ~40 new prompt tokens, and the question is when each of
the eight gets its first token: all after one step that reads all eight prompts, or
one after the other, a prompt's compute apart. llama-server runs its best set-up for
a shared prompt (as in benchmarks/prefix_cache.py); `--baseline CHECKOUT` adds an
earlier checkout's code to the same run.

    .venv/bin/python -m benchmarks.prompt_burst --llama-server .cache/llama-server/bin/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from benchmarks.common import baseline_env, percentile, print_table, save_json
from benchmarks.prefix_cache import USERS, VARIANT, Turn, chat, console, lightgate, peer_command
from leanhttp.client import Client
from leanhttp.local import server_process
from loadtest.prompts import wikitext

ANSWER = 32


async def bursts(base: str, system: str, questions: list[str], count: int) -> dict[str, Any]:
    """A warm-up request, then `count` bursts of USERS requests sent at once: each
    request's TTFT, and each burst's time from the send to its last answer."""
    client = Client(base, timeout_s=600)

    async def ask(question: str) -> Turn:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return await chat(client, messages, ANSWER)

    await ask(questions[-1])
    ttfts: list[list[float]] = []  # per burst, sorted: the k-th is its k-th first token
    walls: list[float] = []
    for b in range(count):
        began = time.perf_counter()
        turns: list[Turn] = await asyncio.gather(*(ask(questions[b * USERS + u]) for u in range(USERS)))
        walls.append(time.perf_counter() - began)
        ttfts.append(sorted(t.ttft for t in turns))
    client.close()
    return {"ttfts_by_burst_s": ttfts, "burst_wall_s": walls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="run every server this many times, interleaved")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="an earlier checkout, as Lightgate@baseline")
    parser.add_argument("--out", default="bench-results/prompt_burst.json")
    parser.add_argument("--plot", default="docs/figures/prompt-burst.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from --out")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text()), Path(args.plot))
        return
    system = wikitext(700, seed=1, count=1).prompts[0].text  # ~1,000 tokens
    questions = [p.text for p in wikitext(22, seed=3, count=USERS * args.bursts + 1).prompts]  # ~32 tokens
    servers: list[tuple[str, list[str], int, str, dict[str, str]]] = [
        ("llama-server (best)", *peer_command(args.llama_server, VARIANT), "/health", {}),
        ("Lightgate", *lightgate(VARIANT, {}), "/ready", {}),
    ]
    if args.baseline:
        servers.append(("Lightgate@baseline", *lightgate(VARIANT, {}), "/ready", baseline_env(args.baseline)))
    runs: dict[str, list[dict[str, Any]]] = {}
    with Progress(console=console) as progress:
        task = progress.add_task("servers", total=len(servers) * args.repeats)
        for _ in range(args.repeats):
            for name, cmd, port, ready, env in servers:
                with server_process(cmd, port, ready, env) as (base, _pid):
                    runs.setdefault(name, []).append(asyncio.run(bursts(base, system, questions, args.bursts)))
                progress.advance(task)
    results = [{"server": name, **pool(rs)} for name, rs in runs.items()]
    peer = results[0]
    print_table(
        ["server", "TTFT p50 s (to peer)", "TTFT mean s (to peer)", "last first token s", "burst done s (to peer)"],
        [
            [
                r["server"],
                f"{r['ttft_p50_s']:.2f} ({r['ttft_p50_s'] / peer['ttft_p50_s']:.2f})",
                f"{r['ttft_mean_s']:.2f} ({r['ttft_mean_s'] / peer['ttft_mean_s']:.2f})",
                f"{r['ttft_max_s']:.2f}",
                f"{r['burst_wall_median_s']:.2f} ({r['burst_wall_median_s'] / peer['burst_wall_median_s']:.2f})",
            ]
            for r in results
        ],
    )
    save_json(args.out, results)
    plot(results, Path(args.plot))


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every burst of every repeat as one sample."""
    each = [b for r in runs for b in r["ttfts_by_burst_s"]]
    walls = [w for r in runs for w in r["burst_wall_s"]]
    every = [t for b in each for t in b]
    return {
        "bursts": len(each),
        "ttft_p50_s": percentile(every, 50),
        "ttft_mean_s": statistics.fmean(every),
        "ttft_max_s": percentile(every, 100),
        "burst_wall_median_s": statistics.median(walls),
        "ttfts_by_burst_s": each,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    from loadtest.plots import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ranks = range(1, USERS + 1)
    for r, color, marker in zip(results, ["#888", "#2a7", "#27a"], "osx", strict=False):
        by_rank = [statistics.median(b[k] for b in r["ttfts_by_burst_s"]) for k in range(USERS)]
        ax.plot(ranks, by_rank, marker=marker, color=color, label=r["server"])
    ax.set_xlabel("k-th first token of a burst")
    ax.set_ylabel("time from the burst's send (s), median over bursts")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(f"{USERS} chat requests at once on a held system prompt, SmolLM2-135M Q4_1, 2 cores", fontsize=9)
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
