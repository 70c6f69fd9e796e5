"""Embedding throughput: Lightgate's /v1/embeddings on the llamacpp backend beside
llama.cpp's own server (`--embeddings`) on the same GGUF (all-MiniLM-L6-v2, f16, made
by llama.cpp's converter), and sentence-transformers called in-process on the HF
folder; Lightgate's transformers backend on that folder too. Interleaved rounds.

Inputs are short WikiText-2 passages (12 words, ~16 tokens). At concurrency C, C
clients send requests back to back, each request carrying a batch of B inputs, until
the cell's inputs are done; inputs/s and tokens/s are over the cell's wall time
(tokens as the server's usage counts them; for sentence-transformers, its tokenizer's).
sentence-transformers has no clients: it encodes the same inputs in batches of B,
one call after another (C does not apply to it).

    .venv/bin/python benchmarks/embeddings.py --llama-server PATH [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import lightgate_config, print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server
from loadtest.prompts import wikitext

console = Console()
GGUF, FOLDER = "all-minilm-l6-v2-f16", "all-minilm-l6-v2"


async def cell(base: str, model: str, texts: list[str], concurrency: int, batch: int) -> tuple[float, int]:
    """(seconds, tokens) for every text sent in requests of `batch`, C clients at once."""
    requests = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    tokens = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def user() -> None:
            nonlocal tokens
            while not queue.empty():
                inputs = queue.get_nowait()
                for attempt in range(2):  # llama-server now and then closes a kept-alive connection
                    try:
                        r = await client.post("/v1/embeddings", json={"model": model, "input": inputs})
                        break
                    except httpx.RemoteProtocolError:
                        if attempt:
                            raise
                r.raise_for_status()
                body = r.json()
                assert len(body["data"]) == len(inputs)
                tokens += body["usage"]["prompt_tokens"]

        began = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        return time.perf_counter() - began, tokens


def sentence_transformers_cell(model: Any, texts: list[str], batch: int) -> tuple[float, int]:
    tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    began = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.encode(texts[i : i + batch], batch_size=batch, normalize_embeddings=True)
    return time.perf_counter() - began, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", help="path of a llama-server binary (the peer)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--inputs", type=int, default=1024, help="inputs per cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench-results/embeddings.json")
    args = parser.parse_args()
    gguf, folder = str(resolve(GGUF)), str(resolve(FOLDER))
    texts = [p.text for p in wikitext(12, count=args.inputs).prompts][: args.inputs]
    slots = max(args.concurrency)
    servers: dict[str, tuple[list[str], int, str, str]] = {}
    port = free_port()
    config = lightgate_config(
        [
            {"name": "minilm", "backend": "llamacpp", "path": gguf, "task": "embed"},
            {"name": "minilm-hf", "backend": "transformers", "path": folder, "task": "embed"},
        ]
    )
    lightgate = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    servers["lightgate"] = (lightgate, port, "/ready", "minilm")
    servers["lightgate (transformers)"] = (lightgate, port, "/ready", "minilm-hf")
    if args.llama_server:
        port = free_port()
        # Its best set-up for many short inputs: a slot per client, each with a full
        # context, and a physical batch as large as the model's context.
        cmd = [args.llama_server, "-m", gguf, "--port", str(port), "--embeddings", "--pooling", "mean"]
        cmd += ["-np", str(slots), "-c", str(512 * slots), "-b", "4096", "-ub", "512"]
        servers["llama-server"] = ([*cmd, "-t", str(args.threads), "-tb", str(args.threads)], port, "/health", "m")
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(folder, device="cpu")
    cells: dict[tuple[str, int, int], list[tuple[float, int]]] = {}
    shapes = [(c, b) for b in args.batch for c in args.concurrency]
    with Progress(console=console) as progress:
        task = progress.add_task("rounds", total=args.rounds * (len(servers) * len(shapes) + len(args.batch)))
        for _ in range(args.rounds):
            for name, (cmd, port, ready, model) in servers.items():
                with server(cmd, port, ready) as base:
                    asyncio.run(cell(base, model, texts[:64], 4, 8))  # warm-up
                    for c, b in shapes:
                        cells.setdefault((name, c, b), []).append(asyncio.run(cell(base, model, texts, c, b)))
                        progress.advance(task)
            for b in args.batch:
                cells.setdefault(("sentence-transformers (in-process)", 0, b), []).append(
                    sentence_transformers_cell(reference, texts, b)
                )
                progress.advance(task)
    results: list[dict[str, Any]] = []
    for (name, c, b), runs in cells.items():
        rates = [len(texts) / s for s, _ in runs]
        token_rates = [t / s for s, t in runs]
        results.append(
            {
                "server": name,
                "concurrency": c,
                "batch": b,
                "inputs_per_s": statistics.median(rates),
                "tokens_per_s": statistics.median(token_rates),
                "rounds": rates,
            }
        )
    peer = {(r["concurrency"], r["batch"]): r["inputs_per_s"] for r in results if r["server"] == "llama-server"}
    for r in results:
        base_rate = peer.get((r["concurrency"], r["batch"]))
        r["to_llama_server"] = r["inputs_per_s"] / base_rate if base_rate else None
    save_json(args.out, {"inputs": len(texts), "results": results})
    rows = [
        [
            r["server"],
            str(r["concurrency"] or "-"),
            str(r["batch"]),
            f"{r['inputs_per_s']:.0f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['to_llama_server']:.2f}" if r["to_llama_server"] else "-",
        ]
        for r in sorted(results, key=lambda r: (r["batch"], r["concurrency"], r["server"]))
    ]
    print_table(["server", "C", "inputs per request", "inputs/s", "tokens/s", "to llama-server"], rows)
    figure = Path(args.out).with_suffix(".png")
    plot(results, figure)
    console.print(f"wrote {args.out} and {figure}")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Inputs/s per server, grouped by (concurrency, batch)."""
    from loadtest.plots import draw_bars, png, pyplot

    plt = pyplot()
    shapes = sorted({(r["concurrency"], r["batch"]) for r in results if r["concurrency"]}, key=lambda s: (s[1], s[0]))
    names = list(dict.fromkeys(r["server"] for r in results))
    # sentence-transformers has no clients: its rate at a batch size stands at every C.
    by = {
        (r["server"], c, r["batch"]): r["inputs_per_s"]
        for r in results
        for c, _ in shapes
        if r["concurrency"] in (0, c)
    }
    fig, ax = plt.subplots(figsize=(10, 4))
    groups = {n: [by.get((n, c, b), 0.0) for c, b in shapes] for n in names}
    draw_bars(ax, [f"C={c}, B={b}" for c, b in shapes], groups)
    ax.set_title("embedding throughput, inputs/s (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
