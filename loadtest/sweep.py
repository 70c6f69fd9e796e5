"""`lightgate bench sweep`: from one stream to saturation, as GuideLLM sweeps. First
one request at a time (the lowest useful rate), then as many users as the server
has slots (its ceiling), then open-loop Poisson arrivals at rates evenly spaced
between the two, so the curve shows where latency starts to climb.

    lightgate bench sweep --model smollm2-135m --max-users 16 --rates 4 --requests-per-level 32
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from loadtest import html, plots
from loadtest import prompts as prompt_sources
from loadtest.cli import first_model
from loadtest.client import RequestSpec
from loadtest.shapes import ClosedLoop, OpenLoop, Shape, Stop, run, run_loop
from loadtest.stats import Summary, summarize


def levels_between(low: float, high: float, count: int) -> list[float]:
    """`count` rates evenly spaced strictly between low and high."""
    step = (high - low) / (count + 1)
    return [low + step * (i + 1) for i in range(count)]


async def sweep(
    base_url: str, spec: RequestSpec, source: prompt_sources.PromptSource, args: argparse.Namespace, on_level: Any
) -> list[tuple[str, float | None, Summary]]:
    """(level name, offered rate or None for closed loops, summary) per level."""
    out: list[tuple[str, float | None, Summary]] = []
    stop = Stop(requests=args.requests_per_level)

    async def level(name: str, shape: Shape, offered: float | None) -> Summary:
        summary = summarize(await run(base_url, spec, source, shape, stop))
        out.append((name, offered, summary))
        on_level(name)
        return summary

    low = await level("synchronous", ClosedLoop(1), None)
    high = await level(f"throughput ({args.max_users} users)", ClosedLoop(args.max_users), None)
    for rate in levels_between(low.request_rate, high.request_rate, args.rates):
        await level(f"{rate:.2f} req/s", OpenLoop(rate, "poisson", seed=args.seed), rate)
    return sorted(out, key=lambda item: item[2].request_rate)


def add_parser(bench: Any) -> None:
    p = bench.add_parser("sweep", help="from one stream to saturation, rates in between", description=__doc__)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", help="model name (default: the server's first in /v1/models)")
    p.add_argument("--max-users", type=int, default=16, help="users of the saturation level")
    p.add_argument("--rates", type=int, default=4, help="open-loop levels between the two")
    p.add_argument("--requests-per-level", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--wikitext-words", type=int, default=64)
    p.add_argument("--wikitext", type=Path, default=prompt_sources.WIKITEXT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="results folder (default: bench-results/sweep-<time>)")
    p.set_defaults(func=main)


HEADER = ["level", "req/s offered", "req/s done", "output tok/s", "TTFT p50 / p99 ms", "ITL p50 / p99 ms", "failed"]


def _cells(name: str, offered: float | None, s: Summary) -> list[str]:
    def pair(d: Any, digits: int) -> str:
        return "-" if d is None else f"{d.median * 1000:.{digits}f} / {d.p99 * 1000:.{digits}f}"

    return [
        name,
        "-" if offered is None else f"{offered:.2f}",
        f"{s.request_rate:.2f}",
        f"{s.output_tok_s:.1f}",
        pair(s.ttft, 0),
        pair(s.itl, 1),
        str(s.failed),
    ]


def main(args: argparse.Namespace) -> int:
    console = Console()
    with httpx.Client(base_url=args.base_url, timeout=30) as client:
        model = args.model or first_model(client)
    spec = RequestSpec(model, max_tokens=args.max_tokens)
    source = prompt_sources.wikitext(args.wikitext_words, args.wikitext, args.seed)
    with Progress(console=console) as progress:
        task = progress.add_task(f"sweep of {model}", total=args.rates + 2)
        levels = run_loop(sweep(args.base_url, spec, source, args, lambda name: progress.advance(task)))
    title = f"Sweep of {model} at {args.base_url}"
    table = Table(title=title)
    for h in HEADER:
        table.add_column(h, justify="right")
    rows = [_cells(*level) for level in levels]
    for row in rows:
        table.add_row(*row)
    console.print(table)

    out = args.out or Path("bench-results") / time.strftime("sweep-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    document = [{"level": n, "offered": o, "summary": asdict(s)} for n, o, s in levels]
    (out / "sweep.json").write_text(json.dumps(document, indent=1))
    md = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + ["| " + " | ".join(r) + " |" for r in rows]
    (out / "sweep.md").write_text("\n".join(md) + "\n")
    sections = [("Levels", html.table(HEADER, rows))]
    note = f"{args.requests_per_level} requests per level, {args.max_tokens} output tokens each"
    try:
        done = [s.request_rate for _, _, s in levels]
        ok = [s for _, _, s in levels]
        speed = {"output tokens/s": [s.output_tok_s for s in ok]}
        ttft = {p: [getattr(s.ttft, p, 0.0) * 1000 if s.ttft else 0.0 for s in ok] for p in ("median", "p99")}
        itl = {p: [getattr(s.itl, p, 0.0) * 1000 if s.itl else 0.0 for s in ok] for p in ("median", "p99")}
        for heading, series, unit in (("Throughput", speed, "tokens/s"), ("TTFT", ttft, "ms"), ("ITL", itl, "ms")):
            png = plots.lines(f"{heading} against load", "requests/s done", done, series, unit)
            sections.append((f"{heading} against load", html.figure(png, heading)))
    except RuntimeError as exc:
        note += f" ({exc})"
    (out / "sweep.html").write_text(html.page(title, sections, note))
    console.print(f"wrote {out}/sweep.json, sweep.md, sweep.html")
    return 0 if all(s.failed == 0 for _, _, s in levels) else 1
