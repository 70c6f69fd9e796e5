"""The bridge between the event loop and an engine's own thread, shared by the
backends whose engine runs in a thread of its own (llama.cpp, speculative, PyTorch):
a job per request, the outbox that hands a step's chunks to the loop in one wake-up,
and a worker thread for engines that run one job at a time."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from backends.base import BackendError, Chunk, GenerationRequest


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


async def job_stream(req: GenerationRequest, submit: Callable[[Job], None]) -> AsyncGenerator[Chunk, None]:
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


class Worker:
    """One thread running jobs one at a time, for engines that decode one sequence
    (the PyTorch baseline, the speculative loop). `run(job, outbox)` does a job's
    work; a failure fails that job alone (a 500), and `after()` runs after every
    job, whatever happened (to leave the engine clean for the next)."""

    def __init__(self, name: str, run: Callable[[Job, Outbox], None], after: Callable[[], None] = lambda: None):
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.running = 0
        self._run, self._after = run, after
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self._thread.join()

    def _loop(self) -> None:
        outbox = Outbox()
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            self.running = 1
            try:
                self._run(job, outbox)
            except Exception as exc:  # the engine failed: this request gets a 500, the worker lives on
                outbox.put(job, BackendError(f"{type(exc).__name__}: {exc}"))
            finally:
                self._after()
                self.running = 0
                outbox.flush()
