"""`lightgate bench run`: load any OpenAI-compatible server one way, measure it from
the client, add the server's own figures, and write the results.

    lightgate bench run --base-url http://127.0.0.1:8000 --model smollm2-135m \\
        --users 8 --requests 64 --max-tokens 128 --slo ttft=500ms,itl=60ms
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loadtest import prompts as prompt_sources
from loadtest.client import RequestRecord, RequestSpec
from loadtest.report import print_summary, write_all
from loadtest.server_metrics import scrape, server_figures
from loadtest.shapes import ClosedLoop, OpenLoop, Shape, Stop, run, run_loop
from loadtest.stats import parse_slo, summarize


def add_parser(bench: Any) -> None:
    """`run` under `lightgate bench` (bench is the argparse subparsers object)."""
    p = bench.add_parser("run", help="load one server and report what it did", description=__doc__)
    target = p.add_argument_group("target")
    target.add_argument("--base-url", default="http://127.0.0.1:8000")
    target.add_argument("--model", help="model name (default: the server's first in /v1/models)")
    target.add_argument("--api-key")
    target.add_argument("--api", choices=["completions", "chat"], default="completions")
    req = p.add_argument_group("requests")
    req.add_argument("--max-tokens", type=int, default=128)
    req.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="let the model stop early (by default every request asks for exactly --max-tokens)",
    )
    req.add_argument("--temperature", type=float, default=0.0)
    src = req.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="one fixed prompt for every request")
    src.add_argument("--jsonl", type=Path, help='prompts from a JSONL file ({"prompt": ...} per line)')
    src.add_argument("--wikitext-words", type=int, default=64, help="WikiText-2 passages of this many words")
    src.add_argument(
        "--prompt-tokens",
        metavar="MEAN[,STDEV]",
        help="prompts of this many of the model's tokens (normally distributed with STDEV), cut from "
        "WikiText-2 through the server's /tokenize and /detokenize",
    )
    req.add_argument("--wikitext", type=Path, default=prompt_sources.WIKITEXT, help="WikiText-2's wiki.test.raw")
    req.add_argument("--seed", type=int, default=0)
    load = p.add_argument_group("load (closed loop with --users, open loop with --rate)")
    shape = load.add_mutually_exclusive_group()
    shape.add_argument("--users", type=int, default=1, help="closed loop: concurrent users")
    shape.add_argument("--rate", type=float, help="open loop: requests per second")
    load.add_argument("--spawn-rate", type=float, help="users started per second (default: all at once)")
    load.add_argument("--think-time", type=float, default=0.0, help="seconds a user waits between requests")
    load.add_argument("--arrival", choices=["poisson", "constant", "gamma"], default="poisson")
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape: below 1 burstier")
    load.add_argument("--max-concurrency", type=int, help="open loop: requests in flight at most")
    stop = p.add_argument_group("stop (whichever comes first)")
    stop.add_argument("--requests", type=int, help="requests to send")
    stop.add_argument("--duration", type=float, help="seconds to keep sending")
    stop.add_argument("--max-error-ratio", type=float, help="stop when more than this share fails")
    p.add_argument("--slo", default="", help="for goodput, e.g. ttft=200ms,itl=50ms (keys: ttft itl tpot e2e)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    p.add_argument("--out", type=Path, help="results folder (default: bench-results/run-<time>)")
    p.set_defaults(func=main)


def _shape(args: argparse.Namespace) -> Shape:
    if args.rate is not None:
        return OpenLoop(args.rate, args.arrival, args.burstiness, args.seed, args.max_concurrency)
    return ClosedLoop(args.users, args.spawn_rate, args.think_time)


def _prompts(args: argparse.Namespace, client: httpx.Client, model: str) -> prompt_sources.PromptSource:
    if args.prompt is not None:
        return prompt_sources.fixed(args.prompt)
    if args.jsonl is not None:
        return prompt_sources.jsonl(args.jsonl)
    if args.prompt_tokens is not None:
        mean, _, stdev = args.prompt_tokens.partition(",")
        count = min(args.requests or 1000, 1000)
        lengths = prompt_sources.token_lengths(int(mean), float(stdev or 0), count, args.seed)
        corpus = prompt_sources.wikitext(64, args.wikitext, args.seed)
        return prompt_sources.of_token_lengths(client, model, lengths, corpus, args.seed)
    return prompt_sources.wikitext(args.wikitext_words, args.wikitext, args.seed)


def first_model(client: httpx.Client) -> str:
    models = client.get("/v1/models").json()["data"]
    if not models:
        raise SystemExit("the server lists no models; give --model")
    return str(models[0]["id"])


def main(args: argparse.Namespace) -> int:
    console = Console()
    if args.requests is None and args.duration is None:
        args.requests = 4 * (args.users if args.rate is None else max(1, round(args.rate)))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=30) as client:
        model = args.model or first_model(client)
        source = _prompts(args, client, model)
        before = scrape(client, model)
    spec = RequestSpec(model, args.api, args.max_tokens, args.ignore_eos, args.temperature)
    shape, stop = _shape(args), Stop(args.duration, args.requests, args.max_error_ratio)
    slo = parse_slo(args.slo)
    title = f"{model} at {args.base_url}: {shape.describe()}"

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(title, total=args.requests)
        tokens = [0]
        started = time.perf_counter()

        def on_record(record: RequestRecord) -> None:
            tokens[0] += record.tokens if record.ok else 0
            rate = tokens[0] / (time.perf_counter() - started)
            progress.update(task, advance=1, description=f"{title} [{rate:.0f} tok/s]")

        result = run_loop(
            run(args.base_url, spec, source, shape, stop, on_record=on_record, api_key=args.api_key,
                timeout_s=args.timeout)
        )  # fmt: skip
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=30) as client:
        after = scrape(client, model)
    summary = summarize(result, slo)
    summary.server = server_figures(before, after)
    print_summary(summary, console, title)
    out = args.out or Path("bench-results") / time.strftime("run-%Y%m%d-%H%M%S")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    config.update(model=model, path=spec.path, prompts=source.name)
    for path in write_all(result, summary, out, title, config):
        console.print(f"wrote {path}")
    return 0 if summary.failed < summary.requests else 1
