"""The `speculative` backend: a small draft model proposes γ tokens, the target
checks them all in one batched decode, and the output is distributed exactly as
the target's own (backends/speculative/verify.py). Two GGUF models on llama.cpp's
low-level API, one sequence at a time in a worker thread.

Why not llama-cpp-python's own draft support: it turns on `logits_all` for every
decode and was slower than plain decoding here. This loop asks for logits only
where it reads them: each draft step's last row, and the target's γ+1 rows.

A step, with t the last token emitted (its KV not yet in either model):
  draft:  decode t (and a kept draft token whose KV it lacks), then γ-1 more, one
          token each, sampling x_1..x_γ from its warped distributions q_i;
  target: decode [t, x_1..x_γ] in one batch: rows 0..γ give p_1..p_γ+1;
  verify: keep x_1..x_k, draw the next token; drop both caches' cells past t, x_1..x_k.

γ adapts when `adaptive` is on (adaptive.py): from the measured acceptance rate
and the measured wall time of each part of a step, it drafts only when that beats
the target alone, and probes now and then while it does not. The draft reads the
prompt only when it first drafts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from backends.base import (
    BackendError,
    BackendStats,
    ChatTemplateInfo,
    Chunk,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    SpeculativeStats,
    TokenLogprob,
    TopLogprob,
    UnsupportedFeature,
    engine_config,
)
from backends.jobs import Job, Outbox, Worker, relay
from backends.llamacpp.engine import EngineConfig, LlamaEngine
from backends.logprobs import log_softmax, top_k
from backends.memory import peak_rss_bytes
from backends.speculative.adaptive import Policy
from backends.speculative.verify import Probs, draw, verify, warp
from backends.textstream import TextStream

NGRAM = "ngram"  # `draft: ngram`: prompt lookup, no draft model


@dataclass(slots=True)
class SpeculativeConfig:
    path: str  # the target GGUF
    draft: str = ""  # a GGUF path or a catalog variant (same tokenizer, smaller model), or "ngram"
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
        if self.draft and not Path(self.draft).is_file():
            from compressed_models.catalog import VariantNotFound, resolve

            with contextlib.suppress(VariantNotFound):  # reported below as a missing file
                self.draft = str(resolve(self.draft))
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


class SpeculativeBackend:
    name = "speculative"

    def __init__(self, path: str | None = None, **options: object) -> None:
        self.config = engine_config(SpeculativeConfig, "speculative", options, path=path or "")
        self._target: LlamaEngine | None = None
        self._draft: LlamaEngine | None = None
        self._worker: Worker | None = None
        self._generated = 0
        self.counters = Counters()
        self.policy = Policy(self.config.gamma_max, self.config.probe_every)  # adaptive γ, across requests
        if self.config.lookup:
            self.policy.costs.draft_s = 0.0  # a lookup in the text so far costs next to nothing
        self._chat_template: ChatTemplateInfo | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        target = await asyncio.to_thread(self._load, self.config.path)
        self._target = target
        if not self.config.lookup:
            self._draft = draft = await asyncio.to_thread(self._load, self.config.draft)
            same_tokenizer(target, draft)
        source = target.metadata("tokenizer.chat_template")
        if source:
            e = target
            eos = e.eog_ids[0] if e.eog_ids else -1
            self._chat_template = ChatTemplateInfo(source, e.token_text(e.bos_id), e.token_text(eos))
        self._worker = Worker("speculative-worker", lambda job, outbox: Run(self, job, outbox).run(), self._clean)
        self._worker.start()

    def _clean(self) -> None:
        """After every request, however it ended: both KV caches empty for the next."""
        for engine in (self._target, self._draft):
            if engine is not None:
                engine.free_sequence(0)

    def _load(self, path: str) -> LlamaEngine:
        import os

        c = self.config
        threads = c.n_threads or len(os.sched_getaffinity(0))
        return LlamaEngine(
            EngineConfig(path, c.n_ctx, c.n_batch, 1, threads, threads, c.n_gpu_layers, True, None, False)
        )

    async def stop(self) -> None:
        if self._worker is not None:
            await asyncio.to_thread(self._worker.stop)
            self._worker = None
        for engine in (self._target, self._draft):
            if engine is not None:
                engine.close()
        self._target = self._draft = None

    # -- the interface the gateway uses ---------------------------------------------

    def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if self._worker is None:
            raise BackendError("the speculative backend is not started")
        if req.params.prompt_logprobs is not None:
            raise UnsupportedFeature("the speculative backend does not score prompts (echo with logprobs)", "echo")
        return relay(req, self._worker.jobs.put)

    @property
    def target(self) -> LlamaEngine:
        if self._target is None:
            raise BackendError("the speculative backend is not started")
        return self._target

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        tokens = self.target.tokenize(text, add_special=True, parse_special=special)
        if special and len(tokens) > 1 and tokens[0] == tokens[1] == self.target.bos_id:
            tokens = tokens[1:]
        return tokens

    def detokenize(self, token_ids: list[int]) -> str:
        return self.target.detokenize(token_ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.target.piece(token_id)

    @property
    def vocab_size(self) -> int:
        return self.target.n_vocab

    @property
    def max_model_len(self) -> int:
        return self.target.n_ctx_seq

    @property
    def chat_template(self) -> ChatTemplateInfo | None:
        return self._chat_template

    def stats(self) -> BackendStats:
        weights = sum(e.weight_bytes for e in (self._target, self._draft) if e is not None)
        c = self.counters
        return BackendStats(
            running=self._worker.running if self._worker else 0,
            waiting=self._worker.jobs.qsize() if self._worker else 0,
            max_running=1,
            weight_bytes=weights or None,
            running_memory_bytes=peak_rss_bytes(),
            generated_tokens=self._generated,
            speculative=SpeculativeStats(c.drafts, c.draft_tokens, c.accepted_tokens),
        )


def same_tokenizer(target: LlamaEngine, draft: LlamaEngine) -> None:
    """Draft tokens are target tokens only if both vocabularies are the same, id for id."""
    if target.n_vocab != draft.n_vocab:
        raise ValueError(f"target and draft tokenizers differ: {target.n_vocab} and {draft.n_vocab} tokens")
    differ = next((t for t in range(target.n_vocab) if target.piece(t) != draft.piece(t)), None)
    if differ is not None:
        raise ValueError(f"target and draft tokenizers differ at token {differ}: they cannot share drafts")


class Run:
    """One request through the speculative loop."""

    def __init__(self, backend: SpeculativeBackend, job: Job, outbox: Outbox) -> None:
        self.b, self.job, self.outbox = backend, job, outbox
        self.t, self.d = backend.target, backend._draft  # no draft model: prompt lookup
        self.params: SamplingParams = job.req.params
        self.prompt = job.req.prompt_tokens
        self.rng = np.random.default_rng(self.params.seed)
        self.stream = TextStream(stop=list(self.params.stop))
        self.generated: list[int] = []
        self.draft_pending: list[int] = []  # emitted tokens whose KV the draft lacks

    # Logits after the request's bias and penalties, before warping (both models).
    def adjusted(self, logits: npt.NDArray[np.float32], history: list[int]) -> npt.NDArray[np.float32]:
        p = self.params
        x = logits.copy()
        for token, bias in p.logit_bias.items():
            x[token] += bias
        if history and (p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty):
            ids, counts = np.unique(np.array(history), return_counts=True)
            seen = x[ids]
            if p.repetition_penalty != 1.0:
                seen = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
            x[ids] = seen - counts * p.frequency_penalty - p.presence_penalty
        if p.ignore_eos or len(history) < p.min_tokens:
            x[self.t.eog_ids] = -np.inf
        return x

    def dist(self, logits: npt.NDArray[np.float32], history: list[int]) -> Probs:
        return warp(self.adjusted(logits, history), self.params)

    def feed(self, engine: LlamaEngine, tokens: list[int], start: int = 0) -> npt.NDArray[np.float32]:
        """Evaluate tokens from position `start`, in chunks of n_batch; the last one's logits (a copy)."""
        n = engine.config.n_batch
        for offset in range(0, len(tokens), n):
            chunk = tokens[offset : offset + n]
            last = offset + len(chunk) == len(tokens)
            flags = [last and i == len(chunk) - 1 for i in range(len(chunk))]
            begin = start + offset
            engine.decode(chunk, list(range(begin, begin + len(chunk))), [0] * len(chunk), flags)
        return engine.logits(len(chunk) - 1).copy()

    def run(self) -> None:
        p = self.params
        started = time.perf_counter()
        target_logits = self.feed(self.t, self.prompt)
        if self.d is not None:
            per_token = (time.perf_counter() - started) / len(self.prompt)
            self.b.policy.costs.guess_catchup(per_token, self.d.weight_bytes / self.t.weight_bytes)
        if p.max_tokens == 0:
            self.emit([], None, "length")
            return
        # The draft reads the prompt when it first drafts: if γ stays 0 it never has to.
        self.draft_pending = list(self.prompt)
        token = draw(self.dist(target_logits, []), self.rng)
        if self.emit([token], [target_logits]):
            return
        while not self.job.cancelled.is_set():
            if self.step():
                return

    def step(self) -> bool:
        """One draft-and-verify step (or a plain target step when γ is 0); True when finished."""
        b, p, costs = self.b, self.params, self.b.policy.costs
        began = time.perf_counter()
        n_past = len(self.prompt) + len(self.generated) - 1  # position of the last emitted token
        last = self.generated[-1]
        remaining = p.max_tokens - len(self.generated)
        wanted = b.policy.choose(len(self.draft_pending), remaining) if b.config.adaptive else b.config.gamma
        gamma = max(min(wanted, remaining - 1, self.t.n_ctx_seq - n_past - 2), 0)
        draft: list[int] = []
        q: list[Probs] = []
        if gamma and self.d is None:
            started = time.perf_counter()
            draft = lookup(self.prompt + self.generated, gamma, self.b.config.ngram)
            q = [_one_hot(x, self.t.n_vocab) for x in draft]  # a lookup is certain of its guess
            gamma = len(draft)  # what the text offered: maybe fewer, maybe none
            if gamma:
                costs.record_draft((time.perf_counter() - started) / gamma)
        elif gamma:
            draft, q = self.propose(n_past, last, gamma)
        # The pass is timed through emission: what one more pass costs the stream.
        started = time.perf_counter()
        rows = [last, *draft]
        self.t.decode(rows, list(range(n_past, n_past + len(rows))), [0] * len(rows), [True] * len(rows))
        raw = [self.t.logits(i).copy() for i in range(len(rows))]
        target_p = [self.dist(raw[i], self.generated + draft[:i]) for i in range(len(rows))]
        verdict = verify(draft, q, target_p, self.rng)
        kept = draft[: verdict.accepted]
        if gamma:
            b.counters.drafts += 1
            b.counters.draft_tokens += gamma
            b.counters.accepted_tokens += verdict.accepted
            costs.record_verdict(verdict.accepted, gamma)
        # Keep the KV of last, x_1..x_k; the draft lacks x_γ's when all were kept.
        keep_until = n_past + 1 + verdict.accepted
        self.t.free_sequence(0, keep_until)
        if self.d is not None:
            self.d.free_sequence(0, min(keep_until, n_past + gamma))
        if not gamma:
            if self.d is not None:
                self.draft_pending.append(last)  # the draft skipped this step: it catches up later
        elif verdict.accepted == gamma:
            self.draft_pending = [draft[-1]]
        finished = self.emit([*kept, verdict.token], raw[: verdict.accepted + 1])
        done = time.perf_counter()
        costs.record_pass(len(rows), done - started)
        b.policy.observe(gamma, done - began, verdict.accepted + 1)
        return finished

    def propose(self, n_past: int, last: int, gamma: int) -> tuple[list[int], list[Probs]]:
        """γ tokens from the draft model and the distributions they were drawn from.
        The first feed also catches the draft up on the tokens it lacks."""
        assert self.d is not None
        costs = self.b.policy.costs
        feed = [*self.draft_pending, last]
        pos = n_past - len(self.draft_pending)
        draft: list[int] = []
        q: list[Probs] = []
        catchup: tuple[int, float] | None = None  # (tokens, seconds of the feed that carried them)
        for _ in range(gamma):
            started = time.perf_counter()
            logits = self.feed(self.d, feed, pos)
            pos += len(feed)
            dist = self.dist(logits, self.generated + draft)
            draft.append(draw(dist, self.rng))
            q.append(dist)
            seconds = time.perf_counter() - started
            if len(feed) <= 2:  # t alone, or with x_γ kept last step: a draft token's cost
                costs.record_draft(seconds)
            else:
                catchup = (len(feed) - 1, seconds)
            feed = [draft[-1]]
        if catchup is not None and costs.draft_s is not None:  # less the draft token that feed also made
            costs.record_catchup(catchup[0], catchup[1] - costs.draft_s)
        self.draft_pending = []
        return draft, q

    def emit(
        self, tokens: list[int], rows: list[npt.NDArray[np.float32]] | None, finish: FinishReason | None = None
    ) -> bool:
        """Send tokens one by one through stop, EOS and max_tokens; True when finished."""
        p, e = self.params, self.t
        for i, token in enumerate(tokens):
            self.generated.append(token)
            self.b._generated += 1
            last = len(self.generated) >= p.max_tokens or len(self.prompt) + len(self.generated) >= e.n_ctx_seq
            text, finish = self.stream.token(e.piece(token), eos=token in e.eog_set, last=last)
            logprobs = None
            if p.logprobs is not None and rows is not None:
                lp = log_softmax(rows[i])
                top = tuple(TopLogprob(j, e.piece(j), v) for j, v in top_k(lp, p.logprobs))
                logprobs = [TokenLogprob(token, e.piece(token), float(lp[token]), top)]
            self.outbox.put(self.job, Chunk([token], text, logprobs, finish))
            if finish is not None:
                self.outbox.flush()
                return True
        if finish is not None:
            self.outbox.put(self.job, Chunk([], "", finish_reason=finish))
        self.outbox.flush()
        return finish is not None


def lookup(context: list[int], gamma: int, ngram: int) -> list[int]:
    """Prompt lookup (Saxena, 2023): the tokens that followed the latest earlier
    occurrence of the context's last n tokens (n from `ngram` down to 1), at most γ.
    Text that repeats its input (code edits, quotes, summaries) is drafted for free."""
    for n in range(min(ngram, len(context) - 1), 0, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                follow = context[start + n : start + n + gamma]
                if follow:
                    return follow
    return []


def _one_hot(token: int, size: int) -> Probs:
    out = np.zeros(size, dtype=np.float64)
    out[token] = 1.0
    return out
