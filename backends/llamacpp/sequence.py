"""A request inside the llama.cpp backend: the sequence the scheduler advances, step
by step, in one of the context's slots."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from backends.base import TokenLogprob
from backends.engine_thread import Job
from backends.llamacpp.sampler import SamplerChain
from backends.textstream import TextStream


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
