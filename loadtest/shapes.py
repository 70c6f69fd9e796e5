"""Load shapes and the loop that drives them. Closed loop, as Locust: a number of
users, started at a spawn rate, each sending a request, waiting for it to finish,
thinking, and sending the next. Open loop, as vLLM's serving benchmark: requests
arrive on their own clock (constant spacing, Poisson, or gamma with a burstiness
factor) whether or not earlier ones have finished. A run stops on a duration, a
request count or an error ratio, whichever comes first."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from leanhttp.client import Client
from loadtest.client import RequestRecord, RequestSpec, send
from loadtest.prompts import PromptSource

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class ClosedLoop:
    users: int
    spawn_rate: float | None = None  # users started per second; None: all at once
    think_time_s: float = 0.0  # a user's pause between one response and its next request

    def describe(self) -> str:
        return f"closed loop, {self.users} users"


@dataclass(slots=True, frozen=True)
class OpenLoop:
    rate: float  # requests per second, on average
    distribution: Literal["constant", "poisson", "gamma"] = "poisson"
    burstiness: float = 1.0  # gamma's shape: 1 is Poisson, below 1 burstier, above 1 steadier
    seed: int = 0
    max_concurrency: int | None = None  # requests in flight at most; arrivals past it wait

    def describe(self) -> str:
        return f"open loop, {self.rate:g} req/s {self.distribution}"

    def intervals(self) -> Callable[[], float]:
        """The time to the next arrival, drawn from the chosen distribution."""
        rng = random.Random(self.seed)
        if self.distribution == "constant":
            return lambda: 1.0 / self.rate
        if self.distribution == "poisson":
            return lambda: rng.expovariate(self.rate)
        # Gamma with shape k and mean 1/rate (scale 1/(rate*k)), as vLLM's benchmark draws it.
        k = self.burstiness
        return lambda: rng.gammavariate(k, 1.0 / (self.rate * k))


Shape = ClosedLoop | OpenLoop


@dataclass(slots=True, frozen=True)
class Stop:
    duration_s: float | None = None
    requests: int | None = None  # requests sent
    max_error_ratio: float | None = None  # of finished requests, once at least 10 have finished

    def __post_init__(self) -> None:
        if self.duration_s is None and self.requests is None:
            raise ValueError("a run needs a duration or a request count to stop at")


@dataclass(slots=True)
class RunResult:
    shape: str
    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0  # from the first request sent to the last one finished
    stopped_by: str = ""


class _Run:
    """The shared state of one run: who may still send, and why it stopped."""

    def __init__(self, stop: Stop, on_record: Callable[[RequestRecord], None] | None) -> None:
        self.stop = stop
        self.on_record = on_record
        self.sent = 0
        self.failed = 0
        self.result_records: list[RequestRecord] = []
        self.t0 = time.perf_counter()
        self.stopped_by = ""

    def may_send(self) -> bool:
        if self.stopped_by:
            return False
        if self.stop.requests is not None and self.sent >= self.stop.requests:
            self.stopped_by = "request count"
        elif self.stop.duration_s is not None and time.perf_counter() - self.t0 >= self.stop.duration_s:
            self.stopped_by = "duration"
        return not self.stopped_by

    def take(self) -> int:
        """The next request's index (counted as sent from here on)."""
        self.sent += 1
        return self.sent - 1

    def finished(self, record: RequestRecord) -> None:
        self.result_records.append(record)
        self.failed += not record.ok
        done = len(self.result_records)
        limit = self.stop.max_error_ratio
        if limit is not None and done >= 10 and self.failed / done > limit and not self.stopped_by:
            self.stopped_by = f"error ratio above {limit:g}"
        if self.on_record is not None:
            self.on_record(record)


async def run(
    base_url: str,
    spec: RequestSpec,
    prompts: PromptSource,
    shape: Shape,
    stop: Stop,
    *,
    on_record: Callable[[RequestRecord], None] | None = None,
    api_key: str | None = None,
    timeout_s: float = 600.0,
) -> RunResult:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    state = _Run(stop, on_record)
    # No connection limit: the load shape decides how many requests are in flight.
    client = Client(base_url, headers, timeout_s)

    async def one(index: int) -> None:
        state.finished(await send(client, spec, prompts.get(index), index, state.t0))

    try:
        if isinstance(shape, ClosedLoop):
            await _closed(shape, state, one)
        else:
            await _open(shape, state, one)
    finally:
        client.close()
    records = sorted(state.result_records, key=lambda r: r.index)
    first = min((r.start for r in records), default=0.0)
    last = max((r.end for r in records), default=0.0)
    return RunResult(shape.describe(), records, last - first, state.stopped_by)


async def _closed(shape: ClosedLoop, state: _Run, one: Callable[[int], Awaitable[None]]) -> None:
    async def user(delay: float) -> None:
        await asyncio.sleep(delay)
        while state.may_send():
            await one(state.take())
            if shape.think_time_s:
                await asyncio.sleep(shape.think_time_s)

    step = 1.0 / shape.spawn_rate if shape.spawn_rate else 0.0
    await asyncio.gather(*(user(i * step) for i in range(shape.users)))


async def _open(shape: OpenLoop, state: _Run, one: Callable[[int], Awaitable[None]]) -> None:
    gap = shape.intervals()
    gate = asyncio.Semaphore(shape.max_concurrency) if shape.max_concurrency else None
    tasks: set[asyncio.Task[None]] = set()

    async def gated(index: int) -> None:
        if gate is None:
            await one(index)
            return
        async with gate:
            await one(index)

    next_at = time.perf_counter()
    while state.may_send():
        task = asyncio.create_task(gated(state.take()))
        tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(tasks.discard)
        next_at += gap()
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    if tasks:
        await asyncio.gather(*tasks)


def run_loop(work: Coroutine[Any, Any, T]) -> T:
    """Run the load on uvloop where it exists: a faster event loop is more requests a
    second from the same CPU, which is what caps a load generator on a small machine."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)
