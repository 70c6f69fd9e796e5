"""A request inside the llama.cpp backend: the job that links it to the event loop,
and the sequence the scheduler advances, step by step, in one of the context's slots."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from enum import Enum, auto

from backends.base import Chunk, GenerationRequest, TokenLogprob
from backends.llamacpp.sampler import SamplerChain
from backends.textstream import TextStream


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


class Phase(Enum):
    PREFILL = auto()  # prompt tokens still to evaluate
    DECODE = auto()  # one sampled token to evaluate per step
    FINISHED = auto()


@dataclass(slots=True, eq=False)
class Sequence:
    job: Job
    slot: int  # llama.cpp sequence id, which owns KV cells
    sampler: SamplerChain
    stream: TextStream
    n_cached: int  # tokens in the slot's KV cells: where the next one goes
    phase: Phase = Phase.PREFILL
    generated: list[int] = field(default_factory=list)  # the last one is not evaluated yet
    prompt_logprobs: list[TokenLogprob] | None = None

    @property
    def prompt(self) -> list[int]:
        return self.job.req.prompt_tokens

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens whose KV the slot holds, for reuse by a later prompt."""
        return (self.prompt + self.generated)[: self.n_cached]
