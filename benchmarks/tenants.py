"""Tenants on one model (SmolLM2-135M Q4_1 on llama.cpp, 8 slots), in one run:

1. Fairness. A "flood" key keeps 64 clients busy (16-token streams, back to back); a
   "light" key sends one request at a time. The light key's TTFT, beside its TTFT when
   it is alone, with fair queuing (the default), with the light key in the interactive
   class, and with plain FIFO admission.
2. Rate-limit accuracy. One key limited to N requests per minute, another to T tokens
   per minute, each sent 5x that demand (open loop) for a minute: what they were given,
   against N and T, and what the last answer's x-ratelimit-* headers said.

    .venv/bin/python -m benchmarks.tenants
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from benchmarks.common import lightgate_config, percentile, print_table, save_json
from benchmarks.overload import MODEL, VARIANT
from leanhttp.client import Client
from leanhttp.local import free_port, server_process
from loadtest.client import Prompt, RequestSpec, send
from loadtest.prompts import wikitext

console = Console(stderr=True)
FLOOD, LIGHT, RPM, TPM = "sk-flood-000001", "sk-light-000002", "sk-rpm-000003", "sk-tpm-000004"
SPEC = RequestSpec(model=MODEL, max_tokens=16, ignore_eos=True)


def serve_cmd(
    scheduling: str, light_priority: str, rpm: int, tpm: int, engine: dict[str, Any] | None = None
) -> tuple[list[str], int]:
    port = free_port()
    options = {"n_ctx": 2048, **(engine or {})}
    model: dict[str, Any] = {"name": MODEL, "backend": "llamacpp", "variant": VARIANT, "options": options}
    model["scheduling"] = scheduling
    if light_priority == "interactive":
        # The latency set-up: a slot kept for interactive keys (and the engine options
        # that keep the steps short: `prompt_chunk`, or a small `n_batch`).
        model["interactive_reserve"] = 1
    tenants = [
        {"name": "flood", "key": FLOOD},
        {"name": "light", "key": LIGHT, "priority": light_priority},
        {"name": "rpm", "key": RPM, "requests_per_minute": rpm},
        {"name": "tpm", "key": TPM, "tokens_per_minute": tpm},
    ]
    config = lightgate_config([model], tenants=tenants, access_log=False)
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)], port


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def flood_process(base: str, prompts: list[str], clients: int, seconds: float, done: Any) -> None:
    """The flood key's clients, in a process of their own: in the light client's event
    loop, 64 streams' chunks would delay the light key's own reads (measured: its p50
    under the flood 177 ms with them in one loop)."""

    async def run() -> None:
        heavy = Client(base, headers=auth(FLOOD), timeout_s=120)
        t0 = time.perf_counter()

        async def flooder(u: int) -> None:
            i = u
            while time.perf_counter() - t0 < seconds:
                i += clients
                r = await send(heavy, SPEC, Prompt(prompts[i % len(prompts)]), i, t0)
                with done.get_lock():
                    done.value += r.ok

        tasks = [asyncio.create_task(flooder(u)) for u in range(clients)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        heavy.close()

    asyncio.run(run())


async def light_ttfts(base: str, prompts: list[str], seconds: float, flood: int) -> tuple[list[float], int]:
    """The light key's TTFTs, one request at a time, while `flood` clients of the flood key run."""
    light = Client(base, headers=auth(LIGHT))
    done = multiprocessing.get_context("spawn").Value("i", 0)
    flooder = None
    if flood:
        flooder = multiprocessing.get_context("spawn").Process(
            target=flood_process, args=(base, prompts, flood, seconds + 3.0, done)
        )
        flooder.start()
        await asyncio.sleep(3.0)  # the queue fills before the light key is measured
    t0 = time.perf_counter()
    ttfts: list[float] = []
    i = 0
    while time.perf_counter() - t0 < seconds:
        i += 1
        r = await send(light, SPEC, Prompt(prompts[(7 * i) % len(prompts)]), i, t0)
        if r.ok and r.ttft is not None:
            ttfts.append(r.ttft)
        await asyncio.sleep(0.05)
    if flooder is not None:
        flooder.join()
    light.close()
    return ttfts, int(done.value)


async def limited(base: str, key: str, rate: float, seconds: float, prompts: list[str]) -> dict[str, Any]:
    """Open loop at `rate` requests/s for `seconds`; what was admitted and the headers."""
    client = Client(base, headers=auth(key), timeout_s=60)
    t0 = time.perf_counter()
    tasks = []
    i = 0
    while (now := time.perf_counter() - t0) < seconds:
        tasks.append(asyncio.create_task(send(client, SPEC, Prompt(prompts[i % len(prompts)]), i, t0)))
        i += 1
        await asyncio.sleep(max(0.0, i / rate - (time.perf_counter() - t0)))
        del now
    records = await asyncio.gather(*tasks)
    client.close()
    ok = [r for r in records if r.ok]
    tokens = sum((r.prompt_tokens or 0) + r.tokens for r in ok)
    return {
        "sent": len(records),
        "admitted": len(ok),
        "tokens": tokens,
        "refused": sum(r.status == 429 for r in records),
    }


async def headers_after(base: str, key: str) -> dict[str, str]:
    import httpx

    async with httpx.AsyncClient(base_url=base, headers=auth(key)) as c:
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 1})
        return {k: v for k, v in r.headers.items() if k.startswith("x-ratelimit") or k == "retry-after"} | {
            "status": str(r.status_code)
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--flood", type=int, default=64)
    parser.add_argument("--rpm", type=int, default=120)
    parser.add_argument("--tpm", type=int, default=4000)
    parser.add_argument(
        "--prompt-chunk", type=int, nargs="+", default=[8], help="the interactive set-up's prompt_chunk, one run each"
    )
    parser.add_argument("--n-batch", type=int, nargs="*", default=[], help="also: the set-up with n_batch instead")
    parser.add_argument("--no-baselines", action="store_true", help="the interactive set-ups only (no rate limits)")
    parser.add_argument("--out", default="bench-results/tenants.json")
    args = parser.parse_args()
    prompts = [p.text for p in wikitext(24, count=200).prompts]
    configs: list[tuple[str, str, str, dict[str, Any]]] = []
    if not args.no_baselines:
        configs.append(("fair (default)", "fair", "standard", {}))
    for n in args.prompt_chunk:
        configs.append(
            (f"fair, light interactive, 1 slot reserved, prompt_chunk {n}", "fair", "interactive", {"prompt_chunk": n})
        )
    for n in args.n_batch:
        configs.append(
            (f"fair, light interactive, 1 slot reserved, n_batch {n}", "fair", "interactive", {"n_batch": n})
        )
    if not args.no_baselines:
        configs.append(("FIFO", "fifo", "standard", {}))
    fairness: list[dict[str, Any]] = []
    limits: dict[str, Any] = {}
    with Progress(console=console) as progress:
        task = progress.add_task("configurations", total=len(configs))
        for name, scheduling, priority, engine in configs:
            cmd, port = serve_cmd(scheduling, priority, args.rpm, args.tpm, engine)
            with server_process(cmd, port, "/ready") as (base, _):
                asyncio.run(light_ttfts(base, prompts, 3.0, 8))  # warm-up
                alone, _ = asyncio.run(light_ttfts(base, prompts, args.seconds / 2, 0))
                loaded, flood_done = asyncio.run(light_ttfts(base, prompts, args.seconds, args.flood))
                fairness.append(
                    {
                        "config": name,
                        "alone_p50": percentile(alone, 50),
                        "alone_p99": percentile(alone, 99),
                        "loaded_p50": percentile(loaded, 50),
                        "loaded_p99": percentile(loaded, 99),
                        "light_requests": len(loaded),
                        "flood_completed": flood_done,
                    }
                )
                if scheduling == "fifo":  # the limits do not depend on the queue's order
                    limits = asyncio.run(rate_limits(base, args, prompts))
            progress.advance(task)
    print_table(
        ["admission", "light alone p50 / p99 (ms)", "light under flood p50 / p99 (ms)", "p99 ratio", "flood done"],
        [
            [
                f["config"],
                f"{1000 * f['alone_p50']:.0f} / {1000 * f['alone_p99']:.0f}",
                f"{1000 * f['loaded_p50']:.0f} / {1000 * f['loaded_p99']:.0f}",
                f"{f['loaded_p99'] / f['alone_p99']:.2f}",
                str(f["flood_completed"]),
            ]
            for f in fairness
        ],
    )
    save_json(args.out, {"fairness": fairness, "limits": limits})
    if not limits:
        return
    r, t = limits["rpm"], limits["tpm"]
    print()
    print_table(
        ["key", "limit", "demand (5x)", "given in the minute", "given / limit", "last headers"],
        [
            [
                "rpm",
                f"{args.rpm} requests/min",
                f"{r['sent']} requests",
                f"{r['admitted']} requests",
                f"{r['admitted'] / args.rpm:.3f}",
                json.dumps(limits["rpm_headers"]),
            ],
            [
                "tpm",
                f"{args.tpm} tokens/min",
                f"{t['sent']} requests",
                f"{t['tokens']} tokens ({t['admitted']} requests)",
                f"{t['tokens'] / args.tpm:.3f}",
                json.dumps(limits["tpm_headers"]),
            ],
        ],
    )
    plot(fairness, Path("docs/figures/tenants-ttft.png"))


def plot(fairness: list[dict[str, Any]], path: Path) -> None:
    from loadtest.plots import draw_bars, png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.6))
    short = "fair, light interactive, 1 slot reserved, "
    labels = [f["config"].replace(short, "interactive,\n1 slot reserved,\n") for f in fairness]
    groups = {
        "alone p99": [1000 * f["alone_p99"] for f in fairness],
        "under flood p50": [1000 * f["loaded_p50"] for f in fairness],
        "under flood p99": [1000 * f["loaded_p99"] for f in fairness],
    }
    draw_bars(ax, labels, groups)
    ax.set_yscale("log")
    ax.legend()
    ax.set_ylabel("light key's TTFT (ms, log scale)")
    ax.set_title("One request at a time beside a key flooding the model with 64 clients (SmolLM2-135M, 8 slots)")
    path.write_bytes(png(fig))


async def rate_limits(base: str, args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    tokens_per_request = 16 + 30  # about: a 24-word passage and 16 generated
    rpm_rate = 5 * args.rpm / 60
    tpm_rate = 5 * args.tpm / tokens_per_request / 60
    rpm, tpm = await asyncio.gather(
        limited(base, RPM, rpm_rate, 60.0, prompts), limited(base, TPM, tpm_rate, 60.0, prompts)
    )
    return {
        "rpm": rpm,
        "tpm": tpm,
        "rpm_headers": await headers_after(base, RPM),
        "tpm_headers": await headers_after(base, TPM),
    }


if __name__ == "__main__":
    main()
