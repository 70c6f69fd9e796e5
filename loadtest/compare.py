"""`lightgate bench compare`: the same workload against several variants (models of
one gateway, or several servers), one table in the shape of Table 3 of "Faster and
Lighter LLMs": variant, engine, weight and running memory, single-stream tokens/s,
tokens/s at concurrency C, TTFT and ITL, perplexity.

    lightgate bench compare --target q4_1=smollm2-135m --target q4_k_m=qwen@http://127.0.0.1:8001 \\
        --concurrency 8 --requests 32 --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from loadtest import html, plots
from loadtest import prompts as prompt_sources
from loadtest.client import RequestSpec
from loadtest.server_metrics import labels_of, scrape, server_figures
from loadtest.shapes import ClosedLoop, Stop, run, run_loop
from loadtest.stats import Summary, summarize


@dataclass(slots=True, frozen=True)
class Target:
    label: str
    model: str
    base_url: str

    @classmethod
    def parse(cls, text: str, default_base: str) -> Target:
        """LABEL=MODEL[@BASE_URL]; without a label, the model names the row."""
        head, at, base = text.partition("@")
        label, eq, model = head.partition("=")
        if not eq:  # no label given
            label = model = head
        return cls(label, model, base if at else default_base)


@dataclass(slots=True)
class Row:
    variant: str
    engine: str
    weight_bytes: float | None
    running_memory_bytes: float | None
    single_tok_s: float
    load_tok_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    perplexity: float | None  # from `lightgate eval ppl`, when the variant has been evaluated
    failed: int


def _row(target: Target, engine: str, single: Summary, load: Summary, ppl: float | None) -> Row:
    def ms(x: float | None) -> float | None:
        return None if x is None else x * 1000

    server = load.server
    return Row(
        variant=target.label,
        engine=engine,
        weight_bytes=server.get("weight_bytes"),
        running_memory_bytes=server.get("running_memory_bytes"),
        single_tok_s=single.output_tok_s,
        load_tok_s=load.output_tok_s,
        ttft_p50_ms=ms(load.ttft.median if load.ttft else None),
        ttft_p99_ms=ms(load.ttft.p99 if load.ttft else None),
        itl_p50_ms=ms(load.itl.median if load.itl else None),
        itl_p99_ms=ms(load.itl.p99 if load.itl else None),
        perplexity=ppl,
        failed=single.failed + load.failed,
    )


HEADER = [
    "variant", "engine", "weight memory", "running memory", "tok/s single stream", "tok/s at C",
    "TTFT p50 / p99 ms", "ITL p50 / p99 ms", "perplexity", "failed",
]  # fmt: skip


def _cells(r: Row) -> list[str]:
    def mb(x: float | None) -> str:
        return "-" if x is None else f"{x / 1e6:,.0f} MB"

    def pair(a: float | None, b: float | None, digits: int) -> str:
        return "-" if a is None or b is None else f"{a:.{digits}f} / {b:.{digits}f}"

    return [
        r.variant, r.engine, mb(r.weight_bytes), mb(r.running_memory_bytes), f"{r.single_tok_s:.1f}",
        f"{r.load_tok_s:.1f}", pair(r.ttft_p50_ms, r.ttft_p99_ms, 0), pair(r.itl_p50_ms, r.itl_p99_ms, 1),
        "-" if r.perplexity is None else f"{r.perplexity:.2f}", str(r.failed),
    ]  # fmt: skip


def markdown(rows: list[Row], concurrency: int) -> str:
    header = [h.replace("at C", f"at C={concurrency}") for h in HEADER]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def report_html(rows: list[Row], concurrency: int, title: str, workload: str) -> str:
    header = [h.replace("at C", f"at C={concurrency}") for h in HEADER]
    sections = [("Variants", html.table(header, [_cells(r) for r in rows]))]
    labels = [r.variant for r in rows]
    note = workload
    try:
        speed = {"single stream": [r.single_tok_s for r in rows], f"C={concurrency}": [r.load_tok_s for r in rows]}
        sections.append(("Output tokens/s", html.figure(plots.bars("Output tokens/s", labels, speed, "tokens/s"), "")))
        ttft = {"p50": [r.ttft_p50_ms or 0.0 for r in rows], "p99": [r.ttft_p99_ms or 0.0 for r in rows]}
        sections.append(
            (f"TTFT at C={concurrency}", html.figure(plots.bars("Time to first token", labels, ttft, "ms"), ""))
        )
        memory = {
            "weights (WM)": [(r.weight_bytes or 0.0) / 1e6 for r in rows],
            "running (RM)": [(r.running_memory_bytes or 0.0) / 1e6 for r in rows],
        }
        sections.append(("Memory", html.figure(plots.bars("Memory", labels, memory, "MB"), "")))
    except RuntimeError as exc:
        note += f" ({exc})"
    return html.page(title, sections, note)


async def measure(
    target: Target, spec: RequestSpec, source: prompt_sources.PromptSource, args: argparse.Namespace
) -> tuple[Summary, Summary]:
    """Single stream, then the loaded run, against one target."""
    single = await run(target.base_url, spec, source, ClosedLoop(1), Stop(requests=args.single_requests))
    # Users spread over about one request's time, so they do not move in lockstep.
    spread = max(single.wall_s / max(1, len(single.records)), 0.1)
    shape = ClosedLoop(args.concurrency, spawn_rate=args.concurrency / spread)
    load = await run(target.base_url, spec, source, shape, Stop(requests=args.requests))
    return summarize(single), summarize(load)


# A variant's perplexity by a protocol ("llamacpp", "gptq"), when one was measured.
PerplexityOf = Callable[[str, str], float | None]


def add_parser(bench: Any, perplexity_of: PerplexityOf | None = None) -> None:
    """`perplexity_of` fills the perplexity column: the load tester measures servers and
    keeps no results of its own, so whoever wires the command in (gateway/cli.py, with
    compressed_models' results) says where they are."""
    p = bench.add_parser("compare", help="the same workload against several variants", description=__doc__)
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="LABEL=MODEL[@BASE_URL]",
        help="a variant to load (repeat); the base URL defaults to --base-url",
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, help="requests of the loaded run (default: 4 per user)")
    p.add_argument("--single-requests", type=int, default=4, help="requests of the single-stream run")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--wikitext-words", type=int, default=64)
    p.add_argument("--wikitext", type=Path, default=prompt_sources.WIKITEXT)
    p.add_argument(
        "--ppl-protocol",
        choices=["llamacpp", "gptq"],
        default="llamacpp",
        help="whose perplexity to show, from `lightgate eval ppl` results",
    )
    p.add_argument("--out", type=Path, help="results folder (default: bench-results/compare-<time>)")
    p.set_defaults(func=main, perplexity_of=perplexity_of)


def main(args: argparse.Namespace) -> int:
    console = Console()
    args.requests = args.requests or 4 * args.concurrency
    targets = [Target.parse(t, args.base_url) for t in args.target]
    source = prompt_sources.wikitext(args.wikitext_words, args.wikitext)
    workload = (
        f"each variant: {args.single_requests} requests one at a time, then {args.requests} from "
        f"{args.concurrency} users; {args.max_tokens} output tokens (ignore_eos), greedy, "
        f"WikiText-2 prompts of {args.wikitext_words} words"
    )
    if len({t.base_url for t in targets}) < len(targets):
        workload += (
            ". Running memory is the serving process's peak: variants served by one process share it "
            "(serve each from its own gateway for a figure per variant)"
        )
    rows: list[Row] = []
    with Progress(console=console) as progress:
        task = progress.add_task("variants", total=len(targets))
        for target in targets:
            progress.update(task, description=f"{target.label} ({target.model} at {target.base_url})")
            spec = RequestSpec(target.model, max_tokens=args.max_tokens)
            with httpx.Client(base_url=target.base_url, timeout=30) as client:
                before = scrape(client, target.model)
                single, load = run_loop(measure(target, spec, source, args))
                load.server = server_figures(before, scrape(client, target.model))
                labels = labels_of(client, target.model)
            # A Lightgate target names its catalog variant; elsewhere the row's label is the variant.
            variant = labels.get("variant") or target.label
            ppl = args.perplexity_of(variant, args.ppl_protocol) if args.perplexity_of else None
            rows.append(_row(target, labels.get("backend", "-"), single, load, ppl))
            progress.advance(task)
    title = "Compressed variants side by side"
    table = Table(title=title)
    for h in HEADER:
        table.add_column(h.replace("at C", f"at C={args.concurrency}"), justify="right")
    for r in rows:
        table.add_row(*_cells(r))
    console.print(table)
    console.print(workload)
    out = args.out or Path("bench-results") / time.strftime("compare-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    document = {"workload": workload, "concurrency": args.concurrency, "rows": [asdict(r) for r in rows]}
    (out / "compare.json").write_text(json.dumps(document, indent=1))
    (out / "compare.md").write_text(markdown(rows, args.concurrency) + "\n" + workload + "\n")
    (out / "compare.html").write_text(report_html(rows, args.concurrency, title, workload))
    console.print(f"wrote {out}/compare.json, compare.md, compare.html")
    return 0 if all(r.failed == 0 for r in rows) else 1
