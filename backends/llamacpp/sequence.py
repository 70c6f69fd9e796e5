"""A request inside the llama.cpp backend: the sequence the scheduler advances, step
by step, in one of the context's slots."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from backends.base import TokenLogprob
from backends.engine_thread import Job
from backends.llamacpp.sampler import SamplerChain
from backends.lookup import Acceptance, Lookup
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
    arrival: int = 0  # the scheduler's count at admission: a later prompt waits for an earlier one it shares
    borrowed: int = 0  # cells taken from another slot's KV (computed once, held by both)
    phase: Phase = Phase.PREFILL
    generated: list[int] = field(default_factory=list)  # the last one is not evaluated yet
    prompt_logprobs: list[TokenLogprob] | None = None
    # Prompt-lookup speculation (the scheduler's `draft_max`): the index of the text so
    # far and its record of drafts kept (made when first asked), this step's draft
    # tokens, the length of the match they came from and where (the scheduler's
    # `History` text, -1: its own text), and matches not drafted since.
    lookup: Lookup | None = None
    acceptance: Acceptance | None = None
    drafts: list[int] = field(default_factory=list)
    match: int = 0
    history_text: int = -1
    unpriced: int = 0

    @property
    def prompt(self) -> list[int]:
        return self.job.req.prompt_tokens

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens whose KV the slot holds, for reuse by a later prompt."""
        return (self.prompt + self.generated)[: self.n_cached]
