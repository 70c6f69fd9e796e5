"""Concurrent streaming load against OpenAI-compatible servers, one server after
another on the same machine: Lightgate's llama.cpp backend (continuous batching), in
the gateway's process and in a worker process (`worker: true`), llama.cpp's own C++
`llama-server`, and llama-cpp-python's `llama_cpp.server`.

Closed loop: C users, each sending streaming completions back to back (128 output
tokens with ignore_eos) until C*K requests (at least 4) are done, K being
--requests-per-user (default 2). Reported per server, model and C: output tokens/s
over the wall time, TTFT and ITL p50/p99, each round's TTFT p50, and dropped
streams (an error status, a broken stream or fewer tokens than asked), as a table,
JSON (--out) and a figure of tokens/s and TTFT p50 per server (--plot).

    .venv/bin/python benchmarks/batching.py --llama-server PATH [--models smollm2 qwen0.5b]

`llama-server` is built from the llama.cpp source vendored in the llama-cpp-python
sdist (see docs/benchmarks.md); without --llama-server that peer is skipped. vLLM
and Lightgate's `vllm` backend run when --vllm-python and an HF folder per model
(--hf-model smollm2=DIR) are given; the HF folder alone adds Lightgate's
`transformers` backend (the PyTorch baseline). `--baseline CHECKOUT` adds the
llamacpp backend of another checkout (a git worktree of an earlier commit), so a
change is measured against the code before it in the same interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from benchmarks.common import baseline_env, lightgate_config, percentile
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server

MODELS = {"smollm2": "smollm2-135m-instruct-q4_1", "qwen0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m"}
console = Console()


@dataclass
class Level:
    concurrency: int
    tokens: int = 0
    wall_s: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    dropped: int = 0
    requests: int = 0
    reasons: list[str] = field(default_factory=list)  # why each dropped stream counts as dropped
    retried: int = 0  # requests sent again after a stale kept-alive connection

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.reasons.append(reason)

    def row(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "dropped": self.dropped,
            "output_tok_s": self.tokens / self.wall_s if self.wall_s else 0.0,
            "ttft_ms_p50": percentile(self.ttft_ms, 50),
            "ttft_ms_p99": percentile(self.ttft_ms, 99),
            "itl_ms_p50": percentile(self.itl_ms, 50),
            "itl_ms_p99": percentile(self.itl_ms, 99),
            "drop_reasons": sorted(set(self.reasons)),
            "retried": self.retried,
        }

    def merge(self, other: Level) -> None:
        """Pool another round's requests into this one (latencies, drops, counts)."""
        self.tokens += other.tokens
        self.wall_s += other.wall_s
        self.ttft_ms += other.ttft_ms
        self.itl_ms += other.itl_ms
        self.dropped += other.dropped
        self.requests += other.requests
        self.reasons += other.reasons
        self.retried += other.retried


async def one_request(client: httpx.AsyncClient, model: str, index: int, tokens: int, level: Level, tag: str) -> None:
    # Every prompt is new to the server (tag, level and index in it): no server gets
    # to answer from a cached copy of an earlier prompt, the warm-up's included.
    body = {
        "model": model,
        "prompt": f"Story {tag}{level.concurrency}-{index}: once upon a time, in a land far away,",
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    stamps: list[float] = []
    for attempt in range(2):
        answered = False
        try:
            async with client.stream("POST", "/v1/completions", json=body) as r:
                answered = True
                if r.status_code != 200:
                    level.drop(f"status {r.status_code}")
                    return
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and _has_text(line):
                        stamps.append(time.perf_counter())
            break
        except httpx.RemoteProtocolError as exc:
            # A kept-alive connection the server had closed as we reused it: the request
            # never reached it. Sent again once (the clock keeps running), as clients do.
            if answered or attempt:
                level.drop(f"{type(exc).__name__}: {exc}")
                return
            level.retried += 1
        except httpx.HTTPError as exc:
            level.drop(f"{type(exc).__name__}: {exc}")
            return
    if len(stamps) < tokens * 0.9:  # a few tokens may merge into one event; many missing is a drop
        level.drop(f"{len(stamps)} of {tokens} tokens")
        return
    level.tokens += len(stamps)
    level.ttft_ms.append((stamps[0] - start) * 1000)
    level.itl_ms.extend((b - a) * 1000 for a, b in itertools.pairwise(stamps))


_EMPTY_TEXT = re.compile(r'"text":\s*""')


def _has_text(line: str) -> bool:
    """An event that carries output text (not a usage or closing event). A regex, not
    json.loads: the client shares the machine's two cores with the server under test."""
    return '"text":' in line and not _EMPTY_TEXT.search(line)


async def run_level(
    base: str, model: str, concurrency: int, tokens: int, timeout: float, tag: str = "", requests: int = 0
) -> Level:
    """Closed loop: `concurrency` users send streaming completions back to back until
    `requests` are done (default: 2 per user, at least 4)."""
    level = Level(concurrency)
    total = requests or max(2 * concurrency, 4)
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:

        async def user() -> None:
            for index in counter:
                await one_request(client, model, index, tokens, level, tag)
                level.requests += 1

        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        level.wall_s = time.perf_counter() - start
    return level


Server = tuple[list[str], int, str, dict[str, str]]  # command, port, readiness path, environment


def servers(model_path: str, threads: int, slots: int, args: argparse.Namespace, short: str) -> dict[str, Server]:
    """name -> how to start it. Every server: the same model, threads and slots."""
    ctx = 512  # per sequence: the prompt and 128 tokens fit easily
    out: dict[str, Server] = {}
    port = free_port()
    options = {"n_ctx": ctx, "n_parallel": slots, "n_threads": threads}
    config = lightgate_config([{"name": "m", "backend": "llamacpp", "path": model_path, "options": options}])
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    out["lightgate"] = (cmd, port, "/ready", {})
    # The same engine in a worker process (`worker: true`): what the process boundary costs.
    port = free_port()
    model = {"name": "m", "backend": "llamacpp", "path": model_path, "options": options, "worker": True}
    config = lightgate_config([model])
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    out["lightgate-worker"] = (cmd, port, "/ready", {})
    if args.baseline:  # the same config on an earlier checkout's code
        port = free_port()
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
        out["lightgate@baseline"] = (cmd, port, "/ready", baseline_env(args.baseline))
    if args.llama_server:
        port = free_port()
        cmd = [args.llama_server, "-m", model_path, "--port", str(port), "-np", str(slots), "-c", str(ctx * slots)]
        out["llama-server"] = ([*cmd, "-t", str(threads), "-tb", str(threads), "--alias", "m"], port, "/health", {})
    hf_dir = dict(pair.split("=", 1) for pair in args.hf_model).get(short)
    if args.vllm_python and hf_dir:
        # vLLM on CPU: bf16 weights from the same GGUF (`lightgate models export-hf`), its own KV space.
        port = free_port()
        cmd = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", hf_dir]
        cmd += ["--served-model-name", "m", "--port", str(port), "--max-model-len", str(ctx)]
        cmd += ["--max-num-seqs", str(slots), "--dtype", "bfloat16"]
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}", "HF_HUB_OFFLINE": "1"}
        out["vllm"] = (cmd, port, "/v1/models", env)
        # Lightgate's vllm backend: the same engine arguments and environment, the
        # gateway in front (run by the vLLM venv's Python, where Lightgate is installed too).
        port = free_port()
        engine = {"max_model_len": ctx, "max_num_seqs": slots, "dtype": "bfloat16"}
        config = lightgate_config([{"name": "m", "backend": "vllm", "path": hf_dir, "options": engine}])
        cmd = [args.vllm_python, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
        out["lightgate-vllm"] = (cmd, port, "/ready", env)
    if hf_dir:
        # The PyTorch baseline on the same HF folder (float32 on the CPU), one sequence at a time.
        port = free_port()
        engine = {"max_model_len": ctx, "n_threads": threads}
        config = lightgate_config([{"name": "m", "backend": "transformers", "path": hf_dir, "options": engine}])
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
        out["lightgate-transformers"] = (cmd, port, "/ready", {})
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--model_alias", "m", "--port", str(port)]
    out["llama_cpp.server"] = ([*cmd, "--n_ctx", str(ctx), "--n_threads", str(threads)], port, "/v1/models", {})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server", help="path of a llama-server binary (the C++ peer)")
    parser.add_argument("--vllm-python", help="a Python with vllm-cpu installed (the vLLM peer)")
    parser.add_argument(
        "--hf-model",
        nargs="*",
        default=[],
        metavar="MODEL=DIR",
        help="HF folder per model (lightgate models export-hf) for vLLM and the PyTorch baseline, e.g. smollm2=DIR",
    )
    parser.add_argument("--servers", nargs="*", help="only these servers (default: every one configured)")
    parser.add_argument(
        "--gguf",
        nargs="*",
        default=[],
        metavar="MODEL=PATH",
        help="another GGUF of a model for the llama.cpp servers (e.g. its bf16: benchmarks/bf16_gguf.py)",
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="another checkout of Lightgate (a git worktree of an earlier commit) run as lightgate@baseline",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    parser.add_argument(
        "--requests-per-user",
        type=int,
        default=2,
        help="requests each of the C users sends per level (at least 4 in all); more gives steadier latency medians",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="pass over the servers this many times, interleaved, and report the median round's tok/s "
        "(the machine's speed drifts by several percent over minutes)",
    )
    parser.add_argument("--out", default="bench-results/batching.json")
    parser.add_argument("--plot", help="where to draw tokens/s and TTFT per server (default: --out as .png)")
    args = parser.parse_args()

    slots = max(args.concurrency)
    levels: dict[tuple[str, str, int], list[Level]] = {}
    for short in args.models:
        model_path = dict(pair.split("=", 1) for pair in args.gguf).get(short) or str(resolve(MODELS[short]))
        chosen = {
            name: how
            for name, how in servers(model_path, args.threads, slots, args, short).items()
            if not args.servers or name in args.servers
        }
        for round_ in range(args.rounds):
            for name, (cmd, port, ready, env) in chosen.items():
                with server(cmd, port, ready, env) as base, Progress(console=console) as progress:
                    label = f"{short} on {name}" + (f", round {round_ + 1}/{args.rounds}" if args.rounds > 1 else "")
                    task = progress.add_task(label, total=len(args.concurrency))
                    # Warm-up at the top concurrency too: an engine's first batch of a new
                    # shape (vLLM's oneDNN kernels, for one) costs more than the rest.
                    asyncio.run(run_level(base, "m", slots, 8, args.timeout, tag=f"warm-up {round_} "))
                    for c in args.concurrency:
                        tag = f"r{round_} " if round_ else ""
                        total = max(c * args.requests_per_user, 4)
                        level = asyncio.run(run_level(base, "m", c, args.tokens, args.timeout, tag=tag, requests=total))
                        levels.setdefault((short, name, c), []).append(level)
                        progress.advance(task)
    results = [_summary(short, name, rounds) for (short, name, _), rounds in levels.items()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    head = "| model | server | C | output tok/s | TTFT p50 / p99 ms | TTFT p50 by round | ITL p50 / p99 ms | dropped |"
    print("\n" + head)
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        by_round = " ".join(f"{t:.0f}" for t in r["ttft_ms_p50_rounds"])
        print(
            f"| {r['model']} | {r['server']} | {r['concurrency']} | {r['output_tok_s']:.1f} | "
            f"{r['ttft_ms_p50']:.0f} / {r['ttft_ms_p99']:.0f} | {by_round} | "
            f"{r['itl_ms_p50']:.1f} / {r['itl_ms_p99']:.1f} | "
            f"{r['dropped']} of {r['requests']} |"
        )
    figure = Path(args.plot or Path(args.out).with_suffix(".png"))
    plot(results, figure)
    console.print(f"\nwrote {args.out} and {figure}")


FIGURES = (("output_tok_s", "output tokens/s (median round)", "tokens/s"), ("ttft_ms_p50", "TTFT p50", "ms"))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Per model, two panels of bars grouped by concurrency, a bar per server: output
    tokens/s and TTFT p50 (on a log scale where values span more than 20x: a server
    that queues is seconds where the others are tens of milliseconds)."""
    from loadtest.plots import draw_bars, png, pyplot

    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.6 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        rows = {(r["server"], r["concurrency"]): r for r in results if r["model"] == model}
        levels = sorted({c for _, c in rows})
        names = list(dict.fromkeys(name for name, _ in rows))
        for ax, (key, title, unit) in zip(row, FIGURES, strict=True):
            shown = [r[key] for r in rows.values() if r[key] > 0]
            groups = {name: [rows[(name, c)][key] if (name, c) in rows else 0.0 for c in levels] for name in names}
            draw_bars(ax, [f"C={c}" for c in levels], groups)
            ax.set_title(f"{model}: {title}")
            if shown and max(shown) > 20 * min(shown):
                ax.set_yscale("log")
                unit += ", log scale"
            else:
                ax.set_ylim(0, 1.35 * max(shown, default=1))  # room for the legend above the bars
            ax.set_ylabel(unit)
            ax.grid(axis="y", alpha=0.3)
        row[0].legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(fig))


def _summary(model: str, name: str, rounds: list[Level]) -> dict[str, Any]:
    """The median round's throughput; latencies and drops pooled over every round,
    with each round's TTFT p50 kept to show how far rounds differ."""
    rates = [lv.tokens / lv.wall_s if lv.wall_s else 0.0 for lv in rounds]
    pooled = Level(rounds[0].concurrency)
    for lv in rounds:
        pooled.merge(lv)
    return {
        "model": model,
        "server": name,
        **pooled.row(),
        "output_tok_s": statistics.median(rates),
        "output_tok_s_rounds": rates,
        "ttft_ms_p50_rounds": [percentile(lv.ttft_ms, 50) for lv in rounds],
    }


if __name__ == "__main__":
    main()
