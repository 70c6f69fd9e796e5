"""How long a model takes to load on demand: a Lightgate engine worker, spawn to ready
(what `lightgate_model_load_seconds` records when the memory budget loads a model),
beside llama-server started to /health on the same GGUF (what llama-swap waits for
when it swaps a model in), for every GGUF of the SmolLM2 ladder in the local cache.
The ten-variant config's options (2 slots of 512 cells, no prompt store), 2 threads.

    .venv/bin/python -m benchmarks.worker_load --llama-server .cache/llama-server/bin/llama-server"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from rich.console import Console
from rich.progress import Progress

from backends.worker.backend import WorkerBackend
from benchmarks.common import print_table, save_json
from compressed_models import catalog
from leanhttp.local import free_port, server

OPTIONS: dict[str, object] = {"n_ctx": 512, "n_parallel": 2, "cache_ram_mib": 0, "n_threads": 2}
console = Console(stderr=True)


async def worker_load(path: str) -> float:
    worker = WorkerBackend("llamacpp", path, dict(OPTIONS), label="load")
    began = time.perf_counter()
    await worker.start()
    took = time.perf_counter() - began
    await worker.stop()
    return took


def peer_load(binary: str, path: str) -> float:
    port = free_port()
    cmd = [binary, "-m", path, "--port", str(port), "-np", "2", "-c", "1024", "-t", "2"]
    began = time.perf_counter()
    with server(cmd, port, "/health"):
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--loads", type=int, default=3, help="loads of each, alternating")
    parser.add_argument("--out", default="bench-results/worker_load.json")
    args = parser.parse_args()
    ladder = [
        n for n in catalog.names() if n.startswith("smollm2-135m-instruct") and catalog.manifest(n)["format"] == "gguf"
    ]
    present = []
    for name in ladder:  # those built here (lightgate models build-gguf), and the packaged one
        try:
            present.append((name, str(catalog.resolve(name))))
        except catalog.VariantNotFound:
            console.print(f"{name}: not in the cache, skipped")
    results: list[tuple[str, list[float], list[float]]] = []
    with Progress(console=console) as progress:
        task = progress.add_task("loads", total=len(present) * args.loads * 2)
        for name, path in present:
            ours, theirs = [], []
            for _ in range(args.loads):  # alternating: the page cache is as warm for both
                ours.append(asyncio.run(worker_load(path)))
                progress.advance(task)
                theirs.append(peer_load(args.llama_server, path))
                progress.advance(task)
            results.append((name, ours, theirs))
    save_json(args.out, [{"variant": n, "worker_s": o, "llama_server_s": t} for n, o, t in results])
    rows = [
        [
            name,
            " ".join(f"{t:.2f}" for t in ours),
            " ".join(f"{t:.2f}" for t in theirs),
            f"{statistics.median(ours) / statistics.median(theirs):.2f}",
        ]
        for name, ours, theirs in results
    ]
    print_table(["GGUF", "Lightgate worker, spawn to ready (s)", "llama-server, start to /health (s)", "ratio"], rows)


if __name__ == "__main__":
    main()
