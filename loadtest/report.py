"""A run's results, written out: a rich table for the terminal, JSON with every
request's record, CSV statistics in Locust's column layout, and a Markdown table."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from loadtest import html, plots
from loadtest.client import RequestRecord
from loadtest.shapes import RunResult
from loadtest.stats import Distribution, Summary

LOCUST_PERCENTILES = (50, 66, 75, 80, 90, 95, 98, 99, 99.9, 99.99, 100)


def _ms(d: Distribution | None, field: str) -> str:
    return "-" if d is None else f"{getattr(d, field) * 1000:.1f}"


def rows(summary: Summary) -> list[tuple[str, str]]:
    """(figure, value) in reading order, shared by the terminal and Markdown tables."""
    s = summary
    out = [
        ("load", s.shape),
        ("requests (failed)", f"{s.requests} ({s.failed})"),
        ("stopped by", s.stopped_by or "-"),
        ("wall time", f"{s.wall_s:.2f} s"),
        ("request throughput", f"{s.request_rate:.2f} req/s"),
        ("output tokens/s", f"{s.output_tok_s:.1f}"),
        ("prompt tokens/s", f"{s.prompt_tok_s:.1f}"),
    ]
    for name, d in (("TTFT", s.ttft), ("ITL", s.itl), ("TPOT", s.tpot), ("end-to-end", s.e2e)):
        out.append(
            (
                f"{name} ms: mean / median / p90 / p99 / std",
                " / ".join(_ms(d, f) for f in ("mean", "median", "p90", "p99", "std")),
            )
        )
    if s.goodput is not None:
        slo = ", ".join(f"{k}<={v * 1000:g}ms" for k, v in s.slo.items())
        out.append((f"goodput ({slo})", f"{s.goodput:.2f} req/s"))
    for key, value in s.server.items():
        out.append((f"server: {key}", f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"))
    for message, count in s.errors.items():
        out.append(("error", f"{count} x {message}"))
    return out


def print_summary(summary: Summary, console: Console, title: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows(summary):
        table.add_row(name, value)
    console.print(table)


def markdown(summary: Summary, title: str) -> str:
    lines = [f"### {title}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows(summary)]
    return "\n".join(lines) + "\n"


def locust_csv(result: RunResult, path: Path, name: str) -> None:
    """Statistics in the columns of Locust's `--csv` stats file (times in ms): one row
    for the whole request, one each for TTFT and ITL, then the aggregate."""
    header = [
        "Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
        "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
        *[f"{p}%" for p in LOCUST_PERCENTILES],
    ]  # fmt: skip
    wall = result.wall_s or float("nan")
    ok = [r for r in result.records if r.ok]
    failed = len(result.records) - len(ok)

    def row(kind: str, values: list[float], count: int, failures: int, size: float) -> list[Any]:
        if not values:
            return [kind, name, count, failures, *[""] * (len(header) - 4)]
        ms = np.asarray(values) * 1000
        pct = np.percentile(ms, LOCUST_PERCENTILES)
        stats = [np.median(ms), ms.mean(), ms.min(), ms.max()]
        return [
            kind, name, count, failures, *[round(float(x), 2) for x in stats], round(size, 1),
            round(count / wall, 3), round(failures / wall, 3), *[round(float(x), 2) for x in pct],
        ]  # fmt: skip

    tokens = sum(r.tokens for r in ok) / len(ok) if ok else 0.0
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(row("POST", [r.e2e for r in ok], len(result.records), failed, tokens))
        w.writerow(row("TTFT", [t for r in ok if (t := r.ttft) is not None], len(ok), 0, 0.0))
        w.writerow(row("ITL", [x for r in ok for x in r.itls()], sum(len(r.itls()) for r in ok), 0, 0.0))
        aggregated = row("", [r.e2e for r in ok], len(result.records), failed, tokens)
        aggregated[1] = "Aggregated"
        w.writerow(aggregated)


def write_all(result: RunResult, summary: Summary, out: Path, title: str, config: dict[str, Any]) -> list[Path]:
    """JSON (config, summary, every request), Locust-style CSV and Markdown under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    records: list[RequestRecord] = result.records
    document = {
        "title": title,
        "config": config,
        "summary": dataclasses.asdict(summary),
        "requests": [r.to_json() for r in records],
    }
    paths = [out / "run.json", out / "stats.csv", out / "summary.md", out / "report.html"]
    # Compact: json's C encoder does not indent, and a run can hold a hundred thousand requests.
    paths[0].write_text(json.dumps(document))
    locust_csv(result, paths[1], config.get("path", "request"))
    paths[2].write_text(markdown(summary, title))
    paths[3].write_text(run_html(result, summary, title))
    return paths


def run_html(result: RunResult, summary: Summary, title: str) -> str:
    sections = [("Summary", html.table(None, rows(summary)))]
    note = ""
    try:
        sections.append(("Latency distributions", html.figure(plots.latency_cdfs(result.records), "latency CDFs")))
        if result.records:
            sections.append(("Through the run", html.figure(plots.over_time(result.records), "throughput over time")))
    except RuntimeError as exc:  # no matplotlib: the tables alone
        note = str(exc)
    return html.page(title, sections, note)
