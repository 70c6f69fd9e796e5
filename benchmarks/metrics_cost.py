"""What observability costs: the gateway on the synthetic backend (no engine time
at all, so the gateway's own work is all there is) with metrics on and off, and
with the JSON access log off too. Two figures per setting: streaming throughput,
and the server process's CPU time per output token (Linux /proc), which the
load generator sharing the machine's cores does not blur. One server process per
setting, rounds interleaved so that drift in the machine's speed falls on every
setting alike; medians over rounds.

    .venv/bin/python benchmarks/metrics_cost.py [--rounds 7] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.batching import run_level
from benchmarks.common import lightgate_config, print_table, save_json
from leanhttp.local import free_port, server

SETTINGS = {  # name -> environment of the gateway process
    "metrics on": {"LIGHTGATE_METRICS": "true", "LIGHTGATE_ACCESS_LOG": "true"},
    "metrics off": {"LIGHTGATE_METRICS": "false", "LIGHTGATE_ACCESS_LOG": "true"},
    "metrics and access log off": {"LIGHTGATE_METRICS": "false", "LIGHTGATE_ACCESS_LOG": "false"},
}


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children: the gateway under test."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone since the listing
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == os.getpid():  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round and setting")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default="bench-results/metrics_cost.json")
    args = parser.parse_args()
    console = Console()
    config = lightgate_config([{"name": "m", "backend": "synthetic"}])
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    cpu_us: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with Progress(console=console) as progress:
        task = progress.add_task("rounds", total=args.rounds * len(SETTINGS))
        for _ in range(args.rounds):
            for name, env in SETTINGS.items():
                port = free_port()
                cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
                with server(cmd, port, "/ready", env) as base:
                    asyncio.run(run_level(base, "m", 4, 8, 60, tag="warm-up "))
                    cpu_before = _children_cpu_s()
                    level = asyncio.run(run_level(base, "m", args.concurrency, args.tokens, 60, requests=args.requests))
                    cpu = _children_cpu_s() - cpu_before
                    assert level.dropped == 0, level.reasons
                    rates[name].append(level.tokens / level.wall_s)
                    cpu_us[name].append(cpu / level.tokens * 1e6)
                progress.advance(task)
    reference = statistics.median(rates["metrics off"])
    reference_cpu = statistics.median(cpu_us["metrics off"])
    results = {
        name: {
            "tok_s_median": statistics.median(rates[name]),
            "tok_s_rounds": rates[name],
            "tok_s_vs_metrics_off": statistics.median(rates[name]) / reference,
            "cpu_us_per_token_median": statistics.median(cpu_us[name]),
            "cpu_us_per_token_rounds": cpu_us[name],
            "cpu_vs_metrics_off": statistics.median(cpu_us[name]) / reference_cpu,
        }
        for name in SETTINGS
    }
    save_json(args.out, results)
    shape = f"{args.concurrency} concurrent streams of {args.tokens} tokens"
    print(f"\nsynthetic backend, {shape}, median of {args.rounds} rounds\n")
    header = ["gateway setting", "output tok/s", "vs metrics off", "server CPU per token", "vs metrics off"]
    print_table(
        header,
        [
            [
                name,
                f"{r['tok_s_median']:.0f}",
                f"{r['tok_s_vs_metrics_off']:.3f}",
                f"{r['cpu_us_per_token_median']:.1f} us",
                f"{r['cpu_vs_metrics_off']:.3f}",
            ]
            for name, r in results.items()
        ],
    )
    console.print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
