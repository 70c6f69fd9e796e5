"""The figures of the HTML reports, drawn with matplotlib (the `report` extra) as
PNG bytes: latency CDFs and throughput over time for a run, bars for a comparison."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from loadtest.client import RequestRecord


def pyplot() -> ModuleType:
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'lightgate[report]'") from exc
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def latency_cdfs(records: Sequence[RequestRecord]) -> bytes:
    """Cumulative distributions of TTFT, ITL and end-to-end latency, in ms."""
    plt = pyplot()
    ok = [r for r in records if r.ok]
    series = {
        "TTFT": [r.ttft * 1000 for r in ok if r.ttft is not None],
        "ITL": [x * 1000 for r in ok for x in r.itls()],
        "end-to-end": [r.e2e * 1000 for r in ok],
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (name, values) in zip(axes, series.items(), strict=True):
        values = sorted(values)
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))])
        ax.set_title(f"{name} CDF")
        ax.set_xlabel("ms")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    return png(fig)


def over_time(records: Sequence[RequestRecord], bin_s: float = 1.0) -> bytes:
    """Output tokens/s and requests in flight, second by second through the run."""
    plt = pyplot()
    if not records:
        raise ValueError("no requests to plot")
    end = max(r.end for r in records)
    bins = max(1, int(end / bin_s) + 1)
    tokens = [0.0] * bins
    for r in records:
        if r.ok:
            # Spread a request's tokens over its chunk arrivals.
            per_chunk = r.tokens / len(r.chunk_times)
            for t in r.chunk_times:
                tokens[min(bins - 1, int(t / bin_s))] += per_chunk / bin_s
    times = [i * bin_s for i in range(bins)]
    in_flight = [sum(1 for r in records if r.start <= t < r.end) for t in times]
    fig, ax = plt.subplots(figsize=(13, 3.4))
    ax.plot(times, tokens, label="output tokens/s")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("tokens/s")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.step(times, in_flight, where="post", color="tab:orange", label="requests in flight")
    ax2.set_ylabel("requests in flight")
    fig.legend(loc="upper right")
    return png(fig)


def draw_bars(ax: Any, labels: Sequence[str], groups: Mapping[str, Sequence[float]]) -> None:
    """Grouped bars on one set of axes: one group per label, one bar per series."""
    width = 0.8 / max(1, len(groups))
    for i, (name, values) in enumerate(groups.items()):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(labels))], labels)


def bars(title: str, labels: Sequence[str], groups: Mapping[str, Sequence[float]], unit: str) -> bytes:
    """Grouped bars: one group per label (variant), one bar per series."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(labels) + 2), 3.6))
    draw_bars(ax, labels, groups)
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return png(fig)


def lines(title: str, xlabel: str, xs: Sequence[float], series: Mapping[str, Sequence[float]], unit: str) -> bytes:
    """Several series against one x axis (for a sweep: figures against load)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)
