"""The `speculative` backend: a small draft model proposes γ tokens, the target
checks them all in one batched decode, and the output is distributed exactly as
the target's own (verify.py). Two GGUF models on llama.cpp's low-level API, one
sequence at a time in a worker thread; loop.py is one request's loop.

Why not llama-cpp-python's own draft support: it turns on `logits_all` for every
decode and was slower than plain decoding here. The loop asks for logits only
where it reads them: each draft step's last row, and the target's γ+1 rows.

γ adapts when `adaptive` is on (adaptive.py): from the measured acceptance rate
and the measured wall time of each part of a step, it drafts only when that beats
the target alone, and probes now and then while it does not."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import (
    BackendError,
    BackendStats,
    Chunk,
    GenerationRequest,
    Kind,
    SpeculativeStats,
    UnsupportedFeature,
    engine_config,
)
from backends.engine_thread import Worker, job_stream
from backends.llamacpp.engine import EngineConfig, LlamaEngine
from backends.llamacpp.tokenizer import LlamaTokenizer, LlamaTokenizerMethods, chat_template_of, grammar_index
from backends.memory import peak_rss_bytes
from backends.speculative.adaptive import Policy
from backends.speculative.loop import Run
from backends.structured import Grammars, constrained

NGRAM = "ngram"  # `draft: ngram`: prompt lookup, no draft model


@dataclass(slots=True)
class SpeculativeConfig:
    path: str  # the target GGUF
    draft: str = ""  # a GGUF path (the router resolves a catalog variant), or "ngram"
    ngram: int = 3  # prompt lookup: the longest n-gram matched against the text so far
    gamma: int = 4  # draft tokens per step when not adaptive
    adaptive: bool = True
    gamma_max: int = 8
    probe_every: int = 16  # with γ = 0, at least this many steps between probes (adaptive.py's budget decides)
    n_ctx: int = 2048
    n_batch: int = 512
    n_threads: int = 0
    n_gpu_layers: int = 0  # layers of both models on a GPU (a CUDA build of llama.cpp); -1: all
    lookup: bool = field(default=False, init=False)  # set from `draft`

    def __post_init__(self) -> None:
        if self.draft == NGRAM:
            self.draft = ""
            self.ngram = max(self.ngram, 1)
            if not Path(self.path).is_file():
                raise FileNotFoundError(f"the speculative backend's target model file not found: {self.path!r}")
            self.lookup = True
            return
        self.lookup = False
        for what, path in (("target", self.path), ("draft", self.draft)):
            if not path or not Path(path).is_file():
                raise FileNotFoundError(f"the speculative backend's {what} model file not found: {path!r}")
        if not 0 <= self.gamma <= self.gamma_max:
            raise ValueError("gamma must be between 0 and gamma_max")


@dataclass(slots=True)
class Counters:
    """What the Prometheus speculative series read (gateway/metrics.py)."""

    drafts: int = 0  # verification passes that checked draft tokens
    draft_tokens: int = 0
    accepted_tokens: int = 0


class SpeculativeBackend(LlamaTokenizerMethods):
    name = "speculative"
    kind = Kind.ENGINE
    weight_options = ("draft",)  # a catalog variant there becomes a path before we start
    tokenizer_class = LlamaTokenizer  # the target's vocabulary (a model in a worker process)

    def __init__(self, path: str | None = None, **options: object) -> None:
        self.config = engine_config(SpeculativeConfig, "speculative", options, path=path or "")
        self._target: LlamaEngine | None = None
        self.draft_engine: LlamaEngine | None = None  # None with prompt lookup
        self._worker: Worker | None = None
        self._grammars: Grammars | None = None
        self.generated_tokens = 0
        self.counters = Counters()
        self.policy = Policy(self.config.gamma_max, self.config.probe_every)  # adaptive γ, across requests
        if self.config.lookup:
            self.policy.costs.draft_s = 0.0  # a lookup in the text so far costs next to nothing

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        target = await asyncio.to_thread(self._load, self.config.path)
        self._target = target
        if not self.config.lookup:
            self.draft_engine = draft = await asyncio.to_thread(self._load, self.config.draft)
            same_tokenizer(target, draft)
        self._chat_template = chat_template_of(target)
        self._grammars = Grammars(lambda: grammar_index(target), target.n_vocab)
        await asyncio.to_thread(self._grammars.warm)
        self._worker = Worker("speculative-worker", lambda job, outbox: Run(self, job, outbox).run(), self._clean)
        self._worker.start()

    def _clean(self) -> None:
        """After every request, however it ended: both KV caches empty for the next."""
        for engine in (self._target, self.draft_engine):
            if engine is not None:
                engine.free_sequence(0)

    def _load(self, path: str) -> LlamaEngine:
        c = self.config
        threads = c.n_threads or len(os.sched_getaffinity(0))
        return LlamaEngine(
            EngineConfig(path, c.n_ctx, c.n_batch, 1, threads, threads, c.n_gpu_layers, True, None, False)
        )

    async def stop(self) -> None:
        if self._worker is not None:
            await asyncio.to_thread(self._worker.stop)
            self._worker = None
        for engine in (self._target, self.draft_engine):
            if engine is not None:
                engine.close()
        self._target = self.draft_engine = None

    # -- the interface the gateway uses ---------------------------------------------

    def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        worker, grammars = self._worker, self._grammars
        if worker is None or grammars is None:
            raise BackendError("the speculative backend is not started")
        if req.params.prompt_logprobs is not None:
            raise UnsupportedFeature("the speculative backend does not score prompts (echo with logprobs)", "echo")
        if req.params.constraint is not None:  # the draft proposes under it, the target verifies under it
            return constrained(req, grammars, lambda r: job_stream(r, worker.jobs.put))
        return job_stream(req, worker.jobs.put)

    @property
    def engine(self) -> LlamaEngine:
        """The target: it tokenizes, and its output is the backend's."""
        if self._target is None:
            raise BackendError("the speculative backend is not started")
        return self._target

    @property
    def max_model_len(self) -> int:
        return self.engine.n_ctx_seq

    def stats(self) -> BackendStats:
        weights = sum(e.weight_bytes for e in (self._target, self.draft_engine) if e is not None)
        c = self.counters
        return BackendStats(
            running=self._worker.running if self._worker else 0,
            waiting=self._worker.jobs.qsize() if self._worker else 0,
            max_running=1,
            weight_bytes=weights or None,
            running_memory_bytes=peak_rss_bytes(),
            generated_tokens=self.generated_tokens,
            speculative=SpeculativeStats(c.drafts, c.draft_tokens, c.accepted_tokens),
        )


def same_tokenizer(target: LlamaEngine, draft: LlamaEngine) -> None:
    """Draft tokens are target tokens only if both vocabularies are the same, id for id."""
    if target.n_vocab != draft.n_vocab:
        raise ValueError(f"target and draft tokenizers differ: {target.n_vocab} and {draft.n_vocab} tokens")
    differ = next((t for t in range(target.n_vocab) if target.piece(t) != draft.piece(t)), None)
    if differ is not None:
        raise ValueError(f"target and draft tokenizers differ at token {differ}: they cannot share drafts")
