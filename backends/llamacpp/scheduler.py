"""Continuous batching for llama.cpp: one thread, one context with `n_parallel` slots,
and one `llama_decode` per step over every running sequence.

A step is: admit waiting jobs into free slots, drop the cancelled, build one batch
(the next token of every decoding sequence first, then prompt chunks of prefilling
ones under the token budget, so a long prompt never stalls the others), decode,
then sample each sequence's next token from its own row of logits.

Slot ids matter for speed. With one KV stream per sequence, llama.cpp splits a
batch into micro-batches of sequences whose ids are consecutive and in increasing
order in the batch (`split_equal(sequential=true)`), and each micro-batch is a
full pass over the weights: 8 decoding sequences listed as slots 4-7 then 0-3
cost two passes; in slots 0-7, one. So a batch lists its rows in slot order, and a
new job takes the free slot that adds the fewest runs of consecutive ids (filling
a gap, extending a run), the least recently freed among equals so that caches of
recent prompts live longest."""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from backends.base import BackendError, Chunk, Preparable
from backends.engine_thread import Job, Outbox
from backends.llamacpp.engine import LlamaEngine
from backends.llamacpp.sampler import SamplerChain, sampler_steps
from backends.llamacpp.sequence import Phase, Sequence
from backends.logprobs import entry, first_prompt_entry
from backends.sampling import constrain
from backends.textstream import TextStream

_MIN_REUSE = 8  # a shared prefix shorter than this (a BOS, a word) is not worth a slot's cache


class Scheduler:
    def __init__(self, engine: LlamaEngine, n_parallel: int, prefix_cache: bool) -> None:
        self.engine = engine
        self.n_parallel = n_parallel
        self.prefix_cache = prefix_cache
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.running: list[Sequence] = []
        self.free_slots: deque[int] = deque(range(n_parallel))  # least recently freed first
        self.slot_tokens: list[list[int]] = [[] for _ in range(n_parallel)]  # KV held by each slot
        self.generated_tokens = 0
        self._stopping = False
        self._mask_thread: ThreadPoolExecutor | None = None  # started by the first constrained sequence
        self.outbox = Outbox()
        self._thread = threading.Thread(target=self._loop, name="llamacpp-scheduler", daemon=True)

    # -- called from the event loop --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self._thread.join()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    @property
    def kv_cells_used(self) -> int:
        """Cells held by running sequences (a finished one's reusable prefix is not counted)."""
        return sum(seq.n_cached for seq in list(self.running))

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            self._admit(block=not self.running)
            for seq in [s for s in self.running if s.job.cancelled.is_set()]:
                self._finish(seq, keep_cache=False)  # a cancelled sequence frees its cells at once
            if self.running:
                try:
                    self._step()
                except Exception as exc:  # an engine failure ends the batch's requests, not the thread
                    for seq in list(self.running):
                        self.outbox.put(seq.job, BackendError(f"llama.cpp failed: {exc}"))
                        self._finish(seq, keep_cache=False)
            self.outbox.flush()
        self._shut_down()
        self.outbox.flush()
        if self._mask_thread is not None:
            self._mask_thread.shutdown()

    def _shut_down(self) -> None:
        for seq in list(self.running):
            self.outbox.put(seq.job, BackendError("the llamacpp backend is shutting down"))
            self._finish(seq, keep_cache=False)
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self.outbox.put(job, BackendError("the llamacpp backend is shutting down"))

    def _admit(self, *, block: bool) -> None:
        while self.free_slots:
            try:
                job = self.jobs.get() if block else self.jobs.get_nowait()
            except queue.Empty:
                return
            block = False
            if job is None:
                self._stopping = True
                return
            if not job.cancelled.is_set():
                self.running.append(self._place(job))

    def _place(self, job: Job) -> Sequence:
        """A slot for the job: the one whose cached tokens share the longest prefix
        with its prompt (its KV is reused), else the one that keeps slots packed."""
        prompt = job.req.prompt_tokens
        busy = {seq.slot for seq in self.running}
        packed = min(self.free_slots, key=lambda c: 1 - ((c - 1) in busy) - ((c + 1) in busy))
        slot, reuse = packed, 0
        if self.prefix_cache and job.req.params.prompt_logprobs is None:
            for candidate in self.free_slots:
                common = _common_prefix(self.slot_tokens[candidate], prompt)
                if common > reuse:
                    slot, reuse = candidate, common
            if reuse < _MIN_REUSE:  # too short to be worth a slot out of the packing
                slot, reuse = packed, 0
        reuse = min(reuse, len(prompt) - 1)  # the last prompt token is evaluated for its logits
        self.free_slots.remove(slot)
        self.engine.free_sequence(slot, start=reuse)
        self.slot_tokens[slot] = prompt[:reuse]
        params = job.req.params
        steps = sampler_steps(params, penalty_window=self.engine.n_ctx_seq)
        sampler = SamplerChain(steps, self.engine.n_vocab)
        seq = Sequence(job, slot, sampler, TextStream(stop=list(params.stop)), n_cached=reuse)
        if params.prompt_logprobs is not None:
            seq.prompt_logprobs = [first_prompt_entry(prompt, self.engine.piece)]
        return seq

    def _step(self) -> None:
        e = self.engine
        # What each sequence contributes: decoding ones their next token first, then
        # prefilling ones prompt chunks within the budget.
        work: dict[int, tuple[Sequence, list[int], list[bool]]] = {}
        sampling: list[Sequence] = []  # the sequences that draw a token after this decode
        for seq in self.running:
            if seq.phase is Phase.DECODE:
                work[seq.slot] = (seq, [seq.generated[-1]], [True])
                sampling.append(seq)
        budget = e.config.n_batch - len(work)
        # Prompts by class (interactive first), in arrival order within one; while an
        # interactive prompt is being read, it has the step's prompt budget to itself,
        # so its first token does not wait for a batch of other prompts.
        prefilling = sorted((s for s in self.running if s.phase is Phase.PREFILL), key=lambda s: s.job.req.priority)
        first_class = prefilling[0].job.req.priority if prefilling else 0
        for seq in prefilling:
            if first_class == 0 and seq.job.req.priority > 0:
                break
            if budget > 0:
                chunk = seq.prompt[seq.n_cached : seq.n_cached + budget]
                last = seq.n_cached + len(chunk) == len(seq.prompt)
                flags = [seq.prompt_logprobs is not None] * len(chunk)
                flags[-1] = flags[-1] or last
                work[seq.slot] = (seq, chunk, flags)
                budget -= len(chunk)
                if last and seq.job.req.params.max_tokens > 0:
                    sampling.append(seq)

        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        wants: list[bool] = []
        rows: list[tuple[Sequence, int, int]] = []  # (sequence, first row, row count)
        for slot in sorted(work):  # slot order: see the module's docstring
            seq, batch_tokens, flags = work[slot]
            rows.append((seq, len(tokens), len(batch_tokens)))
            tokens.extend(batch_tokens)
            positions.extend(range(seq.n_cached, seq.n_cached + len(batch_tokens)))
            slots.extend([slot] * len(batch_tokens))
            wants.extend(flags)
        masks = self._prepare_masks(sampling)
        e.decode(tokens, positions, slots, wants)
        if masks is not None:
            masks.result()
        for seq, first, count in rows:
            self._advance(seq, first, count)

    def _prepare_masks(self, sampling: list[Sequence]) -> Future[None] | None:
        """Grammar masks for this step's draws, computed on a helper thread while
        llama_decode runs (it holds no GIL), so a constraint adds little to the step."""
        work = [
            (processor, seq.generated)
            for seq in sampling
            for processor in seq.job.req.params.logits_processors
            if isinstance(processor, Preparable)
        ]
        if not work:
            return None
        if self._mask_thread is None:
            self._mask_thread = ThreadPoolExecutor(1, thread_name_prefix="llamacpp-masks")

        def prepare() -> None:
            for processor, generated in work:
                processor.prepare(generated)

        return self._mask_thread.submit(prepare)

    def _advance(self, seq: Sequence, first: int, count: int) -> None:
        """Account for the rows just evaluated, then sample where the sequence needs a token."""
        e = self.engine
        params = seq.job.req.params
        if seq.phase is Phase.PREFILL and seq.prompt_logprobs is not None:
            for j in range(count):
                target = seq.n_cached + j + 1  # row j predicts the prompt's next token
                if target < len(seq.prompt):
                    k = params.prompt_logprobs or 0
                    seq.prompt_logprobs.append(entry(e.logits(first + j), seq.prompt[target], k, e.piece))
        seq.n_cached += count
        if seq.phase is Phase.PREFILL:
            if seq.n_cached < len(seq.prompt):
                return
            seq.phase = Phase.DECODE
            if params.max_tokens == 0:  # echo only: the prompt was all that was asked
                self.outbox.put(seq.job, Chunk.prompt_only(seq.prompt_logprobs))
                self._finish(seq)
                return
        self._sample(seq, first + count - 1)

    def _sample(self, seq: Sequence, row: int) -> None:
        """The sequence's next token from its row of this step's logits: constrained in
        place first (the seam: EOS bans, the request's logits processors), then drawn
        by its own sampler chain, which reads that same row."""
        e = self.engine
        params = seq.job.req.params
        logits = e.logits(row)  # a view of llama.cpp's own row: what the sampler chain reads
        raw = logits.copy() if params.logprobs is not None else None
        constrain(logits, params, seq.generated, e.eog_ids)
        token = seq.sampler.sample(e.ctx, row, logits)
        seq.generated.append(token)
        self.generated_tokens += 1
        last = len(seq.generated) == params.max_tokens or seq.n_cached + 1 >= e.n_ctx_seq
        text, finish = seq.stream.token(e.piece(token), eos=token in e.eog_set, last=last)
        logprobs = None
        if raw is not None and params.logprobs is not None:
            logprobs = [entry(raw, token, params.logprobs, e.piece)]
        first = len(seq.generated) == 1
        chunk = Chunk([token], text, logprobs, finish, seq.prompt_logprobs if first else None)
        self.outbox.put(seq.job, chunk)
        if finish is not None:
            self._finish(seq)

    def _finish(self, seq: Sequence, *, keep_cache: bool = True) -> None:
        """Free the slot. Its KV cells stay for prefix reuse (they are overwritten from
        the first differing token), or go at once when caching is off."""
        seq.phase = Phase.FINISHED
        seq.sampler.close()
        self.running.remove(seq)
        if keep_cache and self.prefix_cache:
            self.slot_tokens[seq.slot] = seq.cached_tokens
        else:
            self.engine.free_sequence(seq.slot)
            self.slot_tokens[seq.slot] = []
        self.free_slots.append(seq.slot)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
