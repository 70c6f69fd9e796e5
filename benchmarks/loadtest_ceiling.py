"""The load tester's own ceiling: how many streaming requests per second it sustains
on this machine, and what each costs it in CPU, against Locust's FastHttpUser
driving the same endpoint (reading lines only, and decoding events as a tester
must). Each generator runs in its own process for the same time, one after the
other, rounds interleaved; medians. Two servers:

- `canned`: benchmarks/peers/canned_sse.py, a server that streams canned events
  and costs far less per request than any generator, on core 1 while the
  generator has core 0 to itself: the generator sets the pace, so this is its
  ceiling.
- `gateway`: Lightgate on the synthetic backend with no delays, all cores shared,
  as a user would first try it: here the gateway sets the pace.

    .venv/bin/python benchmarks/loadtest_ceiling.py [--users 16] [--seconds 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import lightgate_config, print_table, save_json
from leanhttp.local import free_port, server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


Tool = Callable[[str, int, float, int, list[str]], tuple[float, int, float]]  # -> (requests/s, requests, CPU s)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def lightgate_tester(base: str, users: int, seconds: float, tokens: int, pin: list[str]) -> tuple[float, int, float]:
    """(requests/s, requests, CPU seconds) of `lightgate bench run` in its own process."""
    out = Path(tempfile.mkdtemp())
    cmd = [*pin, str(BIN / "lightgate"), "bench", "run", "--base-url", base, "--model", "m", "--prompt", "hello"]
    cmd += ["--users", str(users), "--duration", str(seconds), "--max-tokens", str(tokens), "--out", str(out)]
    before = _children_cpu()
    subprocess.run(cmd, check=True, capture_output=True)
    cpu = _children_cpu() - before
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["failed"] == 0, summary["errors"]
    return summary["request_rate"], summary["requests"], cpu


def locust_fasthttp(user_class: str) -> Tool:
    def measure(base: str, users: int, seconds: float, tokens: int, pin: list[str]) -> tuple[float, int, float]:
        return _locust(user_class, base, users, seconds, tokens, pin)

    return measure


def _locust(
    user_class: str, base: str, users: int, seconds: float, tokens: int, pin: list[str]
) -> tuple[float, int, float]:
    out = Path(tempfile.mkdtemp()) / "locust"
    cmd = [*pin, str(BIN / "locust"), "-f", str(ROOT / "benchmarks" / "peers" / "locust_fasthttp.py"), user_class]
    cmd += ["--host", base]
    cmd += ["--headless", "-u", str(users), "-r", str(users * 10), "--run-time", f"{seconds:g}s"]
    cmd += ["--json-file", str(out), "--only-summary", "--stop-timeout", "5"]
    env = {**os.environ, "CEILING_MODEL": "m", "CEILING_MAX_TOKENS": str(tokens)}
    before = _children_cpu()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    cpu = _children_cpu() - before
    [stats] = [e for e in json.loads(out.with_suffix(".json").read_text()) if e["method"] == "POST"]
    assert stats["num_failures"] == 0, stats
    elapsed = stats["last_request_timestamp"] - stats["start_time"]
    return stats["num_requests"] / elapsed, stats["num_requests"], cpu


def canned(port: int) -> list[str]:
    return ["taskset", "-c", "1", sys.executable, str(ROOT / "benchmarks/peers/canned_sse.py"), str(port)]


def gateway(port: int) -> list[str]:
    config = lightgate_config([{"name": "m", "backend": "synthetic", "max_queue": 1024}])
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]


# name -> (server command for a port, the generator's taskset prefix, what the setup shows)
SERVERS: dict[str, tuple[Callable[[int], list[str]], list[str], str]] = {
    "canned": (canned, ["taskset", "-c", "0"], "canned SSE server on core 1, generator alone on core 0"),
    "gateway": (gateway, [], "Lightgate, synthetic backend at zero delay, cores shared"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--out", default="bench-results/loadtest_ceiling.json")
    args = parser.parse_args()
    tools: dict[str, Tool] = {
        "lightgate bench run": lightgate_tester,
        "Locust FastHttpUser, reading lines": locust_fasthttp("LinesUser"),
        "Locust FastHttpUser, decoding events": locust_fasthttp("EventsUser"),
    }
    shape = f"{args.users} users, streaming, {args.tokens} tokens, {args.seconds:g} s per run"
    saved: dict[str, dict[str, dict[str, object]]] = {}
    with Progress() as progress:
        task = progress.add_task("generators", total=args.rounds * len(tools) * len(args.servers))
        for name in args.servers:
            command, pin, what = SERVERS[name]
            port = free_port()
            results: dict[str, list[tuple[float, int, float]]] = {tool: [] for tool in tools}
            with server(command(port), port, "/ready", {"LIGHTGATE_ACCESS_LOG": "false"}) as base:
                for _ in range(args.rounds):
                    for tool_name, tool in tools.items():
                        results[tool_name].append(tool(base, args.users, args.seconds, args.tokens, pin))
                        progress.advance(task)
            saved[name] = {
                tool: {
                    "requests_per_s": statistics.median(r for r, _, _ in runs),
                    "cpu_ms_per_request": statistics.median(cpu / n * 1000 for _, n, cpu in runs),
                    "runs": runs,
                }
                for tool, runs in results.items()
            }
            progress.console.print(f"\n{what}; {shape}; median of {args.rounds} rounds\n")
            print_table(
                ["load generator", "requests/s sustained", "client CPU per request"],
                [
                    [tool, f"{row['requests_per_s']:.0f}", f"{row['cpu_ms_per_request']:.2f} ms"]
                    for tool, row in saved[name].items()
                ],
            )
    save_json(args.out, saved)
    Console().print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
