"""How steady the scheduler's start-up table of step costs is (`StepCost`, timed by
`Scheduler._calibrate` when `speculate` is on): the llamacpp backend started
`--starts` times, each start's table read, each size's spread printed, and each
start's time beside a start without speculation.

A size timed too dear at start is never drafted to, so never timed again: the spread
over starts is what a deployment's drafting depends on. To compare with an earlier
checkout's calibration, run this file with that checkout first on the path:

    .venv/bin/python benchmarks/calibration.py [--model qwen0.5b] [--starts 5]
    git worktree add /tmp/old COMMIT && PYTHONPATH=/tmp/old .venv/bin/python benchmarks/calibration.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from rich.progress import track

from backends.llamacpp.backend import LlamaCppBackend
from compressed_models.catalog import resolve

VARIANTS = {"qwen0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m", "smollm2": "smollm2-135m-instruct-q4_1"}
SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def start(variant: str, speculate: str) -> tuple[float, dict[int, float]]:
    """Seconds to start the backend (4 slots, 2 threads), and the table it started with."""
    backend = LlamaCppBackend(str(resolve(variant)), n_ctx=2048, n_parallel=4, n_threads=2, speculate=speculate)
    t0 = time.perf_counter()
    asyncio.run(backend.start())
    seconds = time.perf_counter() - t0
    scheduler = backend._scheduler
    table = dict(scheduler.cost.times) if scheduler is not None else {}
    asyncio.run(backend.stop())
    return seconds, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(VARIANTS), default="qwen0.5b")
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    variant = VARIANTS[args.model]
    plain: list[float] = []
    timed: list[float] = []
    tables: list[dict[int, float]] = []
    for _ in track(range(args.starts), description="starts, with and without speculation"):
        plain.append(start(variant, "none")[0])
        seconds, table = start(variant, "ngram")
        timed.append(seconds)
        tables.append(table)
    without, with_ = statistics.median(plain), statistics.median(timed)
    print(f"start, s: without speculation {without:.2f}, with {with_:.2f} (medians)")
    print("| rows | min ms | median ms | max ms |\n|---|---|---|---|")
    for rows in SIZES:
        ms = [t[rows] * 1000 for t in tables if rows in t]
        if ms:
            print(f"| {rows} | {min(ms):.0f} | {statistics.median(ms):.0f} | {max(ms):.0f} |")


if __name__ == "__main__":
    main()
