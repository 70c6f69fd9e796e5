"""What constrained decoding costs: JSON Schema output against free text, through
Lightgate's llamacpp backend and through llama.cpp's own server (its `json_schema`),
on the same GGUF, side by side in interleaved rounds.

Closed loop at each concurrency C: C users send streaming chat completions
(temperature 0.7, max_tokens 400) back to back, asking for six people; constrained
requests carry a schema of an array of six objects of four fields. Per server, mode
(free or constrained) and C: the decode rate of one stream (tokens after the first
over the time from the first to the last), the aggregate rate (tokens over the
wall time), and for constrained outputs how many finished with `stop` and parse
and validate against the schema, and how many were dropped. The report gives each
server's constrained rates as a ratio of its own free-text rates.

Per-stream rates at C > 1 also depend on how many streams run at once, and free
answers end sooner than six JSON objects. So Lightgate's engine is also measured
alone, in-process: C sequences of the same length (150 tokens) decoded together,
all constrained or all free (`ignore_eos`), and the median time of a step with all
C running: the constraint's own cost per step, masks included.

    .venv/bin/python benchmarks/structured.py --llama-server PATH [--rounds 3] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import lightgate_config, print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server

console = Console()
MODEL = "smollm2-135m-instruct-q4_1"
PROMPT = "Invent six people. For each give a name, an age, an email address and whether they are active."


class Person(BaseModel):
    name: str
    age: int
    email: str
    active: bool


PEOPLE = TypeAdapter(list[Person])
SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {**Person.model_json_schema(), "additionalProperties": False},
    "minItems": 6,
    "maxItems": 6,
}


@dataclass
class Run:
    """One (server, mode, concurrency) over every round."""

    streams: list[float] = field(default_factory=list)  # per-stream decode rate, tok/s
    aggregate: list[float] = field(default_factory=list)  # per round: tokens / wall time
    requests: int = 0
    stopped: int = 0  # finished with "stop"
    valid: int = 0  # of those, parsed and validated against the schema
    dropped: int = 0
    reasons: list[str] = field(default_factory=list)


async def one(client: httpx.AsyncClient, constrained: bool, run: Run, index: int) -> int:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": f"{PROMPT} (list {index})"}],
        "temperature": 0.7,
        "max_tokens": 400,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}
    stamps: list[float] = []
    text, finish, tokens = [], None, 0
    for attempt in range(2):
        answered = False
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                answered = True
                if r.status_code != 200:
                    run.dropped += 1
                    run.reasons.append(f"status {r.status_code}: {(await r.aread())[:200]!r}")
                    return 0
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        tokens = int(event["usage"]["completion_tokens"])
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            stamps.append(time.perf_counter())
                            text.append(piece)
                        finish = choice.get("finish_reason") or finish
            break
        except httpx.RemoteProtocolError as exc:
            # A kept-alive connection the server closed as we reused it: the request
            # never reached it, so it is sent again once, as clients do.
            if answered or attempt:
                run.dropped += 1
                run.reasons.append(f"{type(exc).__name__}: {exc}")
                return 0
        except httpx.HTTPError as exc:
            run.dropped += 1
            run.reasons.append(f"{type(exc).__name__}: {exc}")
            return 0
    run.requests += 1
    tokens = tokens or len(stamps)
    if len(stamps) > 1 and tokens > 1:
        run.streams.append((tokens - 1) / (stamps[-1] - stamps[0]))
    if constrained and finish == "stop":
        run.stopped += 1
        try:
            PEOPLE.validate_json("".join(text))
            if len(json.loads("".join(text))) == 6:
                run.valid += 1
        except (ValidationError, ValueError):
            pass
    return tokens


async def level(base: str, constrained: bool, concurrency: int, requests: int, run: Run, tag: int) -> None:
    counter = iter(range(requests))
    total = 0
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=httpx.Limits(max_connections=concurrency + 2)) as c:

        async def user() -> None:
            nonlocal total
            for index in counter:
                tokens = await one(c, constrained, run, tag * 1000 + index)
                total += tokens  # after the await: users interleave there

        began = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        run.aggregate.append(total / (time.perf_counter() - began))


def engine_steps(path: str, concurrency: int, rounds: int) -> dict[str, float]:
    """Median step time (ms) with `concurrency` sequences of 150 tokens running, free
    and constrained, rounds interleaved; the llamacpp backend in this process."""
    import dataclasses

    from backends.base import Constraint, GenerationRequest, SamplingParams
    from backends.llamacpp.backend import LlamaCppBackend
    from backends.llamacpp.scheduler import Scheduler

    steps: list[tuple[int, float]] = []
    original = Scheduler._step

    def timed(self: Scheduler) -> None:
        began = time.perf_counter()
        original(self)
        steps.append((len(self.running), time.perf_counter() - began))

    async def run() -> dict[str, float]:
        backend = LlamaCppBackend(path, n_ctx=1024, n_parallel=concurrency)
        await backend.start()
        prompt = backend.tokenize(PROMPT)
        free = SamplingParams(max_tokens=150, temperature=0.7, ignore_eos=True)
        constrained = dataclasses.replace(
            free, ignore_eos=False, constraint=Constraint("json_schema", json.dumps(SCHEMA))
        )
        out: dict[str, list[float]] = {"free": [], "json_schema": []}
        for round_ in range(rounds):
            for mode, params in (("free", free), ("json_schema", constrained)):
                steps.clear()

                async def one(i: int, params: SamplingParams = params, first: int = round_ * concurrency) -> None:
                    # A prompt of its own per sequence and round: no prefix reuse between them.
                    req = GenerationRequest(str(i), [*prompt, 100 + first + i], dataclasses.replace(params, seed=i))
                    async for _ in backend.generate(req):
                        pass

                await asyncio.gather(*(one(i) for i in range(concurrency)))
                out[mode] += [t for n, t in steps if n == concurrency]
        await backend.stop()
        return {mode: statistics.median(times) * 1e3 for mode, times in out.items()}

    Scheduler._step = timed  # type: ignore[method-assign]
    try:
        return asyncio.run(run())
    finally:
        Scheduler._step = original  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", help="path of a llama-server binary (the peer)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--requests-per-user", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench-results/structured.json")
    args = parser.parse_args()
    path = str(resolve(MODEL))
    slots = max(args.concurrency)
    servers: dict[str, tuple[list[str], int, str]] = {}
    port = free_port()
    config = lightgate_config(
        [{"name": "m", "backend": "llamacpp", "path": path, "options": {"n_ctx": 1024, "n_parallel": slots}}]
    )
    servers["lightgate"] = (
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
        port,
        "/ready",
    )
    if args.llama_server:
        port = free_port()
        cmd = [args.llama_server, "-m", path, "--port", str(port), "-np", str(slots), "-c", str(1024 * slots)]
        servers["llama-server"] = (
            [*cmd, "-t", str(args.threads), "-tb", str(args.threads), "--jinja"],
            port,
            "/health",
        )
    runs: dict[tuple[str, str, int], Run] = {}
    with Progress(console=console) as progress:
        task = progress.add_task("rounds", total=args.rounds * len(servers) * len(args.concurrency) * 2)
        for round_ in range(args.rounds):
            for name, (cmd, port, ready) in servers.items():
                with server(cmd, port, ready) as base:
                    asyncio.run(level(base, True, 1, 1, Run(), 99))  # warm-up: the grammar's first compile
                    for c in args.concurrency:
                        for constrained in (False, True):
                            run = runs.setdefault((name, "json_schema" if constrained else "free", c), Run())
                            asyncio.run(level(base, constrained, c, c * args.requests_per_user, run, round_))
                            progress.advance(task)
    results: list[dict[str, Any]] = []
    for (name, mode, c), run in runs.items():
        results.append(
            {
                "server": name,
                "mode": mode,
                "concurrency": c,
                "stream_tok_s": statistics.median(run.streams) if run.streams else 0.0,
                "aggregate_tok_s": statistics.median(run.aggregate) if run.aggregate else 0.0,
                "aggregate_rounds": run.aggregate,
                "requests": run.requests,
                "stopped": run.stopped,
                "valid": run.valid,
                "dropped": run.dropped,
                "reasons": sorted(set(run.reasons)),
            }
        )
    free = {(r["server"], r["concurrency"]): r for r in results if r["mode"] == "free"}
    for r in results:
        peer = free[(r["server"], r["concurrency"])]
        r["stream_ratio"] = r["stream_tok_s"] / peer["stream_tok_s"] if peer["stream_tok_s"] else 0.0
        r["aggregate_ratio"] = r["aggregate_tok_s"] / peer["aggregate_tok_s"] if peer["aggregate_tok_s"] else 0.0
    engine = {c: engine_steps(path, c, args.rounds) for c in args.concurrency}
    save_json(args.out, {"servers": results, "engine_step_ms": engine})
    rows = [
        [
            r["server"],
            r["mode"],
            str(r["concurrency"]),
            f"{r['stream_tok_s']:.1f} ({r['stream_ratio']:.2f})",
            f"{r['aggregate_tok_s']:.1f} ({r['aggregate_ratio']:.2f})",
            f"{r['valid']} of {r['stopped']} ({r['requests']} done)" if r["mode"] != "free" else "-",
            str(r["dropped"]),
        ]
        for r in sorted(results, key=lambda r: (r["concurrency"], r["server"], r["mode"]))
    ]
    header = [
        "server",
        "mode",
        "C",
        "stream tok/s (to free)",
        "aggregate tok/s (to free)",
        "valid of stopped",
        "dropped",
    ]
    print_table(header, rows)
    print()
    print_table(
        ["C", "step ms, free", "step ms, json_schema", "ratio"],
        [
            [str(c), f"{e['free']:.1f}", f"{e['json_schema']:.1f}", f"{e['json_schema'] / e['free']:.3f}"]
            for c, e in engine.items()
        ],
    )
    figure = Path(args.out).with_suffix(".png")
    plot(results, engine, figure)
    console.print(f"wrote {args.out} and {figure}")


def plot(results: list[dict[str, Any]], engine: dict[int, dict[str, float]], path: Path) -> None:
    """Three panels of json_schema-to-free ratios grouped by concurrency: per stream and
    aggregate for each server, and the engine's step time (1.0 is no cost)."""
    from loadtest.plots import draw_bars, png, pyplot

    plt = pyplot()
    constrained = {(r["server"], r["concurrency"]): r for r in results if r["mode"] == "json_schema"}
    levels = sorted({c for _, c in constrained})
    names = list(dict.fromkeys(name for name, _ in constrained))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, key, title in (
        (axes[0], "stream_ratio", "one stream's decode rate"),
        (axes[1], "aggregate_ratio", "aggregate tokens/s"),
    ):
        groups = {n: [constrained[(n, c)][key] if (n, c) in constrained else 0.0 for c in levels] for n in names}
        draw_bars(ax, [f"C={c}" for c in levels], groups)
        ax.set_title(f"{title}: json_schema / free")
    steps = {"lightgate engine": [engine[c]["json_schema"] / engine[c]["free"] for c in sorted(engine)]}
    draw_bars(axes[2], [f"C={c}" for c in sorted(engine)], steps)
    axes[2].set_title("step time: json_schema / free (lower is better)")
    for ax in axes:
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_ylim(0, 1.4)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
