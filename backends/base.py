"""The token-engine interface: what every engine implements (the `Backend` protocol)
and the data that crosses it. Relays to OpenAI-compatible servers have their own,
smaller protocol (backends/relay.py); `Kind` says which of the two a backend is."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

FinishReason = Literal["stop", "length"]


class Kind(Enum):
    """The two kinds of backend. The gateway branches on this, never on a name."""

    ENGINE = "engine"  # takes token ids and SamplingParams, yields Chunks (Backend)
    RELAY = "relay"  # forwards the client's JSON to OpenAI-compatible servers (backends/relay.py)


class BackendError(Exception):
    """An engine failure the gateway reports as a server error (never a client's fault)."""


class EngineDead(BackendError):
    """The engine has stopped for good (its process died): no request can run on this
    model until the gateway restarts. The gateway answers 503 and stops calling it
    live and ready."""


class EngineRestarting(BackendError):
    """The model's engine worker died and is starting again: the request could not
    run (or not finish). The gateway answers 503; a retry will reach the new worker."""


class UnsupportedFeature(ValueError):
    """A request asks for something this backend cannot do; the gateway answers 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self) -> tuple[type[UnsupportedFeature], tuple[str, str | None]]:
        return type(self), (str(self), self.param)  # keeps `param` across a worker's pipe


def refuse_constraint(params: SamplingParams, backend: str) -> None:
    """For engines that enforce no grammar."""
    if params.constraint is not None:
        raise UnsupportedFeature(
            f"the {backend} backend does not support structured outputs ({params.constraint.param})",
            params.constraint.param,
        )


def refuse_logits_processors(params: SamplingParams, backend: str) -> None:
    """For engines that sample inside their own code, where no per-sequence hook reaches."""
    if params.logits_processors:
        raise UnsupportedFeature(
            f"the {backend} backend samples inside its engine: it takes no per-request logits processors",
            "logits_processors",
        )


class LogitsProcessor(Protocol):
    """Changes one sequence's row of raw logits in place before it is sampled, given
    the tokens generated so far (a grammar's token mask, a ban). Engines that sample
    themselves call it inside their batched step (backends/sampling.py's `constrain`);
    it must accept any history, a shorter one included (a speculative step tries
    several and keeps some)."""

    def __call__(self, generated: Sequence[int], logits: npt.NDArray[np.float32]) -> None: ...


@runtime_checkable
class Preparable(Protocol):
    """A logits processor that can do its work ahead: `prepare(generated)` may run on
    another thread while the engine decodes; the call with the same history then
    only applies the result (a grammar's mask)."""

    def prepare(self, generated: Sequence[int]) -> None: ...


@dataclass(slots=True, frozen=True)
class Constraint:
    """What a sequence's output must match (structured outputs). Engines that sample
    themselves enforce it with a grammar (backends/structured.py); vLLM with its own
    structured outputs; the others refuse it, naming `param`."""

    kind: Literal["json_schema", "json_object", "regex", "choice", "grammar"]
    spec: str = ""  # the schema as JSON, the regex, the choices as a JSON list, the grammar
    param: str = "response_format"  # the request field it came from, for errors


@dataclass(slots=True)
class SamplingParams:
    """How to pick tokens for one sequence. Defaults mean "off" for every processor.
    Requests are checked in gateway/protocol.py (a 400 naming the field), not here."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: the sampled token plus k alternatives
    prompt_logprobs: int | None = None  # same for the prompt's tokens (echo)
    ignore_eos: bool = False
    min_tokens: int = 0
    # Applied first, on the raw logits (before bias and penalties), by the engines that
    # sample themselves; the others refuse a request that has any (UnsupportedFeature).
    logits_processors: tuple[LogitsProcessor, ...] = ()
    constraint: Constraint | None = None  # structured output: the engine turns it into a processor, or refuses it

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(slots=True)
class GenerationRequest:
    """One sequence to generate. The gateway fans `n` choices out into several of these."""

    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    # Scheduling class, 0 first (the gateway's interactive keys); engines that schedule
    # prompts themselves may put lower numbers first. A hint: it changes no output.
    priority: int = 1


@dataclass(slots=True, frozen=True)
class TopLogprob:
    token_id: int
    token: bytes
    logprob: float


@dataclass(slots=True, frozen=True)
class TokenLogprob:
    """A token with its log-probability under the model's raw distribution and the
    most likely alternatives. `logprob` is None only for a prompt's first token."""

    token_id: int
    token: bytes
    logprob: float | None
    top: tuple[TopLogprob, ...] = ()


@dataclass(slots=True)
class Chunk:
    """A piece of one sequence's output. `text` may be empty while a stop string or a
    multi-byte character is still undecided; the last chunk carries `finish_reason`."""

    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # first chunk only, when asked

    @classmethod
    def prompt_only(cls, prompt_logprobs: list[TokenLogprob] | None) -> Chunk:
        """The one chunk of an echo-only request (max_tokens 0): the prompt was all it asked for."""
        return cls([], "", finish_reason="length", prompt_logprobs=prompt_logprobs)


@dataclass(slots=True)
class BackendStats:
    running: int = 0
    waiting: int = 0
    max_running: int = 1
    kv_cache_usage: float | None = None  # fraction of cells in use, when the engine says
    weight_bytes: int | None = None  # the survey's WM: the model's weights as loaded
    running_memory_bytes: int | None = None  # the survey's RM: peak memory while serving
    generated_tokens: int = 0  # since start, cancelled sequences included
    speculative: SpeculativeStats | None = None  # only a backend that drafts reports these
    prefix_cache: PrefixCacheStats | None = None  # only a backend that reuses prompts' KV reports these
    upstreams: list[UpstreamStats] | None = None  # only a backend that forwards to replicas


@dataclass(slots=True, frozen=True)
class SpeculativeStats:
    """Counters since start of a backend that drafts and verifies."""

    drafts: int  # verification passes that checked draft tokens
    draft_tokens: int  # tokens proposed by the draft
    accepted_tokens: int  # draft tokens the target kept


@dataclass(slots=True, frozen=True)
class PrefixCacheStats:
    """Counters since start of a backend that reuses the KV of earlier prompts (vLLM's
    prefix_cache_queries and prefix_cache_hits: tokens, not requests)."""

    queries: int  # prompt tokens of the sequences that looked in the cache
    hits: int  # of those, tokens whose KV was reused instead of computed


@dataclass(slots=True, frozen=True)
class UpstreamStats:
    """One upstream replica of a forwarding backend, as its router sees it."""

    url: str
    available: bool  # healthy and not ejected: requests may go there
    outstanding: int  # requests in flight to it
    requests: int  # attempts sent, since start
    errors: int  # attempts that failed
    ejections: int  # times it was ejected after consecutive failures


@runtime_checkable
class Backend(Protocol):
    """A token engine behind the gateway. It knows nothing of HTTP, and gets file
    paths, never catalog names: the router resolves `variant`, and every option the
    class lists in `weight_options` (a draft model), before constructing it."""

    name: str
    kind: Kind  # Kind.ENGINE: a class attribute

    async def start(self) -> None:
        """Load weights and warm up."""

    async def stop(self) -> None:
        """Drain and free memory."""

    def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        """Stream one sequence. Closing the iterator early cancels it in the engine."""
        ...

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        """Token ids of `text`, with the model's BOS when it wants one and `bos` is
        true (a text's first piece). `special` parses control tokens written in the
        text (`<|im_start|>`): a completions prompt, a chat template's markup; never
        a chat message's content."""
        ...

    def detokenize(self, token_ids: list[int]) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def chat_template(self) -> ChatTemplateInfo | None: ...

    def stats(self) -> BackendStats: ...


@runtime_checkable
class Supervised(Protocol):
    """A token engine in a process the gateway supervises (backends/worker/): it can be
    stopped and started again at will, so the memory budget loads and unloads it, and
    it tells the router when its process died and when it is back."""

    on_state: Callable[[bool, str | None], None] | None  # (up, why): set by the router
    unfetched: bool  # its weights are not on disk yet (`fetch: on_demand`)

    @property
    def path(self) -> str | None:
        """The weights it loads (a file or a folder); None until fetched."""
        ...

    async def prepare(self) -> None:
        """What the gateway keeps while no process runs (the tokenizer)."""

    def fetched(self, path: str) -> None:
        """The weights are on disk now: the next start loads them."""

    def estimate_bytes(self) -> int | None:
        """What its process will hold before it has run, from the weights and options
        (the engine class's `memory_estimate`); None when the class cannot say."""

    def gpu_estimate_bytes(self) -> dict[int, int]:
        """What its process will hold on each GPU before it has run (the class's
        `gpu_memory_estimate`); empty on the CPU."""

    def footprint_key(self) -> str | None:
        """A digest of what its memory depends on (engine, options, weights): a
        footprint measured under it is kept across gateway restarts."""

    @property
    def pid(self) -> int | None:
        """Its process id while one runs (GPU memory is counted by process)."""


@dataclass(slots=True, frozen=True)
class ChatTemplateInfo:
    """The model's own chat template (Jinja source) and the special tokens it uses."""

    source: str
    bos_token: str = ""
    eos_token: str = ""


C = TypeVar("C")


def engine_config(cls: type[C], backend: str, options: dict[str, object], **fixed: Any) -> C:
    """A backend's config dataclass from the model's `options`, an unknown option
    being an error that lists the known ones (a typo must not be ignored)."""
    known = {f.name for f in dataclasses.fields(cls)} - set(fixed)  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown {backend} options {unknown}; known: {sorted(known)}")
    return cls(**fixed, **options)
