"""The gateway spine's benchmark, each figure side by side with its peer in one run:

1. single-stream decode tokens/s through the gateway (streaming, HTTP on loopback)
   against llama-cpp-python called directly in-process, same model, threads and
   flash-attention setting; the two alternate, run after run;
2. the time the gateway adds to the first token, with the synthetic backend (no
   model, zero delays) against calling that backend in-process;
3. the OpenAI contract, probed the same way against Lightgate and against
   llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`), when its
   extra dependencies are installed.

    .venv/bin/python benchmarks/spine.py [--runs 5] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.base import GenerationRequest, SamplingParams
from backends.synthetic import SyntheticBackend
from benchmarks.common import lightgate_config, percentile
from benchmarks.contract import probe_contract
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server

PROMPT = "Write a long story about a dragon who learns to bake bread. Once upon a time"
console = Console()


def decode_rate(token_times: list[float]) -> float:
    """Tokens per second after the first token (decode only, prefill excluded)."""
    return (len(token_times) - 1) / (token_times[-1] - token_times[0])


def gateway_decode(base: str, tokens: int) -> tuple[float, int]:
    body = {"model": "m", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    times: list[float] = []
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                times.append(time.perf_counter())
    return decode_rate(times), len(times)


def direct_decode(llm: Any, tokens: int) -> tuple[float, int]:
    times: list[float] = []
    for chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):
        if chunk["choices"][0]["finish_reason"] is None or chunk["choices"][0]["text"]:
            times.append(time.perf_counter())  # not the closing chunk, which carries no token
    return decode_rate(times), len(times)


def bench_decode(runs: int, tokens: int, threads: int) -> dict[str, Any]:
    from llama_cpp import Llama

    model = str(resolve("smollm2-135m-instruct-q4_1"))
    options = {"n_ctx": 2048, "n_threads": threads, "flash_attn": True}
    config = lightgate_config([{"name": "m", "backend": "llamacpp", "path": model, "options": options}])
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    llm = Llama(model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)
    gateway: list[float] = []
    direct: list[float] = []
    with server(cmd, port, "/ready") as base, Progress(console=console) as progress:
        gateway_decode(base, 8)  # warm both up
        direct_decode(llm, 8)
        task = progress.add_task("decode: gateway vs direct", total=runs)
        for _ in range(runs):
            rate, n = gateway_decode(base, tokens)
            gateway.append(rate)
            rate_direct, n_direct = direct_decode(llm, tokens)
            direct.append(rate_direct)
            if n != tokens or n_direct != tokens:
                console.print(f"[yellow]note: {n} and {n_direct} tokens instead of {tokens} (EOS)")
            progress.advance(task)
    g, d = statistics.median(gateway), statistics.median(direct)
    return {"gateway_tok_s": g, "direct_tok_s": d, "ratio": g / d, "runs": runs, "tokens": tokens, "threads": threads}


def bench_overhead(requests: int) -> dict[str, Any]:
    """Client-seen time to first token through HTTP, minus the backend's own, in ms."""
    config = lightgate_config([{"name": "s", "backend": "synthetic"}])
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    body = {"model": "s", "prompt": "hello", "max_tokens": 1, "stream": True}
    through_gateway: list[float] = []
    with (
        server(cmd, port, "/ready") as base,
        httpx.Client(base_url=base, timeout=30) as client,
        Progress(console=console) as progress,
    ):
        task = progress.add_task("first-token overhead", total=requests)
        for i in range(requests + 20):
            start = time.perf_counter()
            with client.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                for line in lines:
                    if line.startswith("data: {"):
                        if i >= 20:  # the first 20 warm the connection and the server
                            through_gateway.append((time.perf_counter() - start) * 1000)
                        break
                for _ in lines:
                    pass
            if i >= 20:
                progress.advance(task)

    async def in_process() -> list[float]:
        backend = SyntheticBackend()
        out = []
        for _ in range(requests):
            start = time.perf_counter()
            async for _chunk in backend.generate(GenerationRequest("r", [1], SamplingParams(max_tokens=1))):
                out.append((time.perf_counter() - start) * 1000)
        return out

    direct = asyncio.run(in_process())
    return {
        "gateway_ttft_ms_p50": percentile(through_gateway, 50),
        "gateway_ttft_ms_p99": percentile(through_gateway, 99),
        "direct_ttft_ms_p50": percentile(direct, 50),
        "added_ms_p50": percentile(through_gateway, 50) - percentile(direct, 50),
        "requests": requests,
    }


def bench_contract() -> dict[str, Any]:
    model = str(resolve("smollm2-135m-instruct-q4_1"))
    results: dict[str, Any] = {}
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--model", model, "--port", str(port)]
    name = Path(model).stem
    with server(cmd, port, "/ready") as base:
        results["lightgate"] = probe_contract(base, name)
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        console.print(f"[yellow]llama_cpp.server not importable ({exc}); install llama-cpp-python[server] to compare")
        return results
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(port), "--n_ctx", "2048"]
    with server(cmd, port, "/v1/models") as base:
        results["llama_cpp.server"] = probe_contract(base, name)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", default="bench-results/spine.json")
    args = parser.parse_args()

    decode = bench_decode(args.runs, args.tokens, args.threads)
    overhead = bench_overhead(args.requests)
    contract = bench_contract()
    result = {"decode": decode, "overhead": overhead, "contract": contract}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    print("\n| single-stream decode (SmolLM2-135M Q4_1) | tokens/s |")
    print("|---|---|")
    print(f"| llama-cpp-python in-process (peer) | {decode['direct_tok_s']:.1f} |")
    print(f"| Lightgate, streaming over HTTP | {decode['gateway_tok_s']:.1f} |")
    print(f"| ratio | **{decode['ratio']:.3f}** |")
    print(f"\n{decode['runs']} runs x {decode['tokens']} tokens, {decode['threads']} threads, medians")
    print("\n| first token, synthetic backend | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| backend in-process (peer) | {overhead['direct_ttft_ms_p50']:.3f} | |")
    print(f"| through Lightgate | {overhead['gateway_ttft_ms_p50']:.3f} | {overhead['gateway_ttft_ms_p99']:.3f} |")
    print(f"| added by the gateway | **{overhead['added_ms_p50']:.3f}** | |")
    if contract:
        servers = list(contract)
        print("\n| check | " + " | ".join(servers) + " |")
        print("|---|" + "---|" * len(servers))
        for check in contract[servers[0]]:
            print(f"| {check} | " + " | ".join(contract[s].get(check, "") for s in servers) + " |")
    console.print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
