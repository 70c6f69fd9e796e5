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

    def send(self, item: Chunk | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()


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
