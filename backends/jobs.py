"""The bridge between the event loop and an engine's own thread, shared by the
backends whose engine runs in a thread of its own (llama.cpp, PyTorch): a job per
request, and the outbox that hands a step's chunks to the loop in one wake-up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from backends.base import Chunk, GenerationRequest


@dataclass(slots=True, eq=False)
class Job:
    """The bridge between the event loop (which awaits `out`) and the decode thread."""

    req: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Chunk | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class Outbox:
    """What one scheduler step produced, handed to the event loop in a single wake-up.
    One hand-off per step instead of one per token keeps the decode thread and the
    event loop from trading the GIL back and forth at every token."""

    def __init__(self) -> None:
        self._items: list[tuple[Job, Chunk | BaseException]] = []

    def put(self, job: Job, item: Chunk | BaseException) -> None:
        self._items.append((job, item))

    def flush(self) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Chunk | BaseException]]] = {}
        for job, item in self._items:
            by_loop.setdefault(job.loop, []).append((job, item))
        self._items = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for job, _ in items:
                    job.cancelled.set()


def _deliver(items: list[tuple[Job, Chunk | BaseException]]) -> None:
    for job, item in items:
        job.out.put_nowait(item)


async def relay(req: GenerationRequest, submit: Callable[[Job], None]) -> AsyncGenerator[Chunk, None]:
    """A request's chunks as the engine thread hands them over. The job is submitted
    on the first iteration, and leaving early (a client gone) marks it cancelled,
    which the engine thread checks before its next step."""
    job = Job(req, asyncio.get_running_loop())
    submit(job)
    try:
        while True:
            item = await job.out.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return
    finally:
        job.cancelled.set()
