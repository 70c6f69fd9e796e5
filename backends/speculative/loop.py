"""One request through the speculative loop, on the worker thread of the
`speculative` backend (backend.py).

A step, with t the last token emitted (its KV not yet in either model):
  draft:  decode t (and a kept draft token whose KV it lacks), then γ-1 more, one
          token each, sampling x_1..x_γ from its distributions q_i;
  target: decode [t, x_1..x_γ] in one batch: rows 0..γ give p_1..p_γ+1;
  verify: keep x_1..x_k, draw the next token; drop both caches' cells past t, x_1..x_k.

Both models' distributions come from the reference sampling order
(backends/sampling.py), the request's logits processors included: the draft
proposes under the same constraints the target verifies against, so the output
is the constrained target's. The draft reads the prompt only when it first drafts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from backends.base import Chunk, FinishReason, SamplingParams
from backends.engine_thread import Job, Outbox
from backends.llamacpp.engine import LlamaEngine
from backends.logprobs import entry
from backends.lookup import lookup
from backends.sampling import Probs, distribution, draw
from backends.speculative.verify import verify
from backends.textstream import TextStream

if TYPE_CHECKING:
    from backends.speculative.backend import SpeculativeBackend

Logits = npt.NDArray[np.float32]


class Run:
    """One request: its state between steps, and the step itself."""

    def __init__(self, backend: SpeculativeBackend, job: Job, outbox: Outbox) -> None:
        self.backend, self.job, self.outbox = backend, job, outbox
        self.target = backend.engine
        self.draft = backend.draft_engine  # None: prompt lookup drafts
        self.params: SamplingParams = job.req.params
        self.prompt = job.req.prompt_tokens
        self.rng = np.random.default_rng(self.params.seed)
        self.stream = TextStream(stop=list(self.params.stop))
        self.generated: list[int] = []
        self.draft_pending: list[int] = []  # emitted tokens whose KV the draft lacks

    def dist(self, logits: Logits, history: list[int]) -> Probs:
        """The request's distribution after `history` (both models share the target's EOS ids)."""
        return distribution(logits, self.params, history, self.target.eog_ids)

    def feed(self, engine: LlamaEngine, tokens: list[int], start: int = 0) -> Logits:
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
        p, policy = self.params, self.backend.policy
        started = time.perf_counter()
        target_logits = self.feed(self.target, self.prompt)
        if self.draft is not None:
            per_token = (time.perf_counter() - started) / len(self.prompt)
            policy.costs.guess_catchup(per_token, self.draft.weight_bytes / self.target.weight_bytes)
        if p.max_tokens == 0:
            self.outbox.put(self.job, Chunk.prompt_only(None))
            self.outbox.flush()
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
        backend, p = self.backend, self.params
        config, policy, counters = backend.config, backend.policy, backend.counters
        costs = policy.costs
        began = time.perf_counter()
        n_past = len(self.prompt) + len(self.generated) - 1  # position of the last emitted token
        last = self.generated[-1]
        remaining = p.max_tokens - len(self.generated)
        wanted = policy.choose(len(self.draft_pending), remaining) if config.adaptive else config.gamma
        gamma = max(min(wanted, remaining - 1, self.target.n_ctx_seq - n_past - 2), 0)
        proposed: list[int] = []
        q: list[Probs] = []
        if gamma and self.draft is None:
            started = time.perf_counter()
            proposed = lookup(self.prompt + self.generated, gamma, config.ngram)
            q = [_one_hot(x, self.target.n_vocab) for x in proposed]  # a lookup is certain of its guess
            gamma = len(proposed)  # what the text offered: maybe fewer, maybe none
            if gamma:
                costs.record_draft((time.perf_counter() - started) / gamma)
        elif gamma:
            proposed, q = self.propose(n_past, last, gamma)
        # The pass is timed through emission: what one more pass costs the stream.
        started = time.perf_counter()
        rows = [last, *proposed]
        self.target.decode(rows, list(range(n_past, n_past + len(rows))), [0] * len(rows), [True] * len(rows))
        raw = [self.target.logits(i).copy() for i in range(len(rows))]
        target_p = [self.dist(raw[i], self.generated + proposed[:i]) for i in range(len(rows))]
        verdict = verify(proposed, q, target_p, self.rng)
        kept = proposed[: verdict.accepted]
        if gamma:
            counters.drafts += 1
            counters.draft_tokens += gamma
            counters.accepted_tokens += verdict.accepted
            costs.record_verdict(verdict.accepted, gamma)
        # Keep the KV of last, x_1..x_k; the draft lacks x_γ's when all were kept.
        keep_until = n_past + 1 + verdict.accepted
        self.target.free_sequence(0, keep_until)
        if self.draft is not None:
            self.draft.free_sequence(0, min(keep_until, n_past + gamma))
        if not gamma:
            if self.draft is not None:
                self.draft_pending.append(last)  # the draft skipped this step: it catches up later
        elif verdict.accepted == gamma:
            self.draft_pending = [proposed[-1]]
        finished = self.emit([*kept, verdict.token], raw[: verdict.accepted + 1])
        done = time.perf_counter()
        costs.record_pass(len(rows), done - started)
        policy.observe(gamma, done - began, verdict.accepted + 1)
        return finished

    def propose(self, n_past: int, last: int, gamma: int) -> tuple[list[int], list[Probs]]:
        """γ tokens from the draft model and the distributions they were drawn from.
        The first feed also catches the draft up on the tokens it lacks."""
        assert self.draft is not None
        costs = self.backend.policy.costs
        feed = [*self.draft_pending, last]
        pos = n_past - len(self.draft_pending)
        proposed: list[int] = []
        q: list[Probs] = []
        catchup: tuple[int, float] | None = None  # (tokens, seconds of the feed that carried them)
        for _ in range(gamma):
            started = time.perf_counter()
            logits = self.feed(self.draft, feed, pos)
            pos += len(feed)
            dist = self.dist(logits, self.generated + proposed)
            proposed.append(draw(dist, self.rng))
            q.append(dist)
            seconds = time.perf_counter() - started
            if len(feed) <= 2:  # t alone, or with x_γ kept last step: a draft token's cost
                costs.record_draft(seconds)
            else:
                catchup = (len(feed) - 1, seconds)
            feed = [proposed[-1]]
        if catchup is not None and costs.draft_s is not None:  # less the draft token that feed also made
            costs.record_catchup(catchup[0], catchup[1] - costs.draft_s)
        self.draft_pending = []
        return proposed, q

    def emit(self, tokens: list[int], rows: list[Logits]) -> bool:
        """Send tokens one by one through stop, EOS and max_tokens; True when finished.
        `rows[i]` holds the raw logits token i was drawn from (its logprobs)."""
        p, target = self.params, self.target
        finish: FinishReason | None = None
        for token, row in zip(tokens, rows, strict=True):
            self.generated.append(token)
            self.backend.generated_tokens += 1
            last = len(self.generated) >= p.max_tokens or len(self.prompt) + len(self.generated) >= target.n_ctx_seq
            text, finish = self.stream.token(target.piece(token), eos=token in target.eog_set, last=last)
            logprobs = [entry(row, token, p.logprobs, target.piece)] if p.logprobs is not None else None
            self.outbox.put(self.job, Chunk([token], text, logprobs, finish))
            if finish is not None:
                break
        self.outbox.flush()
        return finish is not None


def _one_hot(token: int, size: int) -> Probs:
    out = np.zeros(size, dtype=np.float64)
    out[token] = 1.0
    return out
