"""Continuous batching for llama.cpp: one thread, one context with `n_parallel` slots,
and one `llama_decode` per step over every running sequence (two on a CPU when a
prompt gets its first token: that prompt's rows first, its token handed out, then
the rest; see `_step`).

A step is: admit waiting jobs into free slots, drop the cancelled, build one batch
(the next token of every decoding sequence first, then prompt chunks of prefilling
ones under the token budget, so a long prompt never stalls the others), decode,
then sample each sequence's next token from its own row of logits. On a CPU, a
step gives at most one prompt its first token, so that prompts arriving together
get theirs one prompt's compute apart, not all after the last.

Slot ids matter for speed. With one KV stream per sequence, llama.cpp splits a
batch into micro-batches of sequences whose ids are consecutive and in increasing
order in the batch (`split_equal(sequential=true)`), and each micro-batch is a
full pass over the weights: 8 decoding sequences listed as slots 4-7 then 0-3
cost two passes; in slots 0-7, one. So a batch lists its rows in slot order, and a
new job takes the free slot that adds the fewest runs of consecutive ids (filling
a gap, extending a run), the least recently freed among equals so that caches of
recent prompts live longest.

The prefix cache. A new prompt takes the free slot whose cells hold the longest
prefix of it (a conversation's next turn finds its previous turn there). Then,
before a prefilling sequence computes its next chunk, it takes from any other slot,
running or free, the KV of the longest prefix of its prompt that slot holds
(`LlamaEngine.share`: a copy of that slot's stream, tens of milliseconds; in one
unified stream, the cells themselves), and while an earlier sequence is still
computing a longer shared prefix, it waits for it. So eight requests with one system
prompt compute it once. With one unified stream slot ids no longer split a batch,
so there a new job takes the least recently freed slot, whose cache is the stalest.
Before a slot's cells are overwritten, the sequence they hold goes to the prompt
store in host memory (backends/llamacpp/prompt_store.py), and a new prompt that
starts with a stored one longer than any slot offers restores it into its slot.

Speculation (`draft_max` > 0): a decoding sequence may add draft tokens after its
next one, from prompt lookup over its own text (backends/lookup.py, which follows a
copy through the changes it makes consistently, such as a renamed identifier), or
over the history of finished requests' answers (a request sent again), whichever
source's record promises the surer draft at its match's length (`pick_source`),
verified in the same `llama_decode` as every other sequence's rows. Each row is then
sampled as a plain step would sample it (its own sampler chain, constrained, with
the tokens kept so far as history), and drafts are kept while they equal what was
sampled. A draft from lookup is one token with certainty, and for such a draft this
is exactly speculative sampling's rule (accept x with probability p(x), else draw
from p without x), so the output is the sequence's own, greedy or sampled, seed
included; the first token that differs ends the step and the rejected drafts' cells
go. How many tokens a sequence drafts is priced each step: how often tokens were
kept after a match as long as this one (`Acceptance`: the sequence's own record,
over the scheduler's for every sequence) gives each draft token's chance, and the
measured time of steps by their size (`StepCost`: a ladder timed at start on this
thread, then every step of one weight pass) what its rows cost. The step takes the
plan with the most expected tokens per second (`plan_drafts`): each sequence, surest
first, drafting the length that most raises it, or every sequence drafting alike,
each plan priced by the weight passes it makes (with a stream per slot, sequences
that bring different numbers of rows split the step: `passes`); drafts from the
history keep records of their own. A copy under way (a long match)
drafts long; text with nothing to copy drafts nothing but a token now and then, to
keep its record current. Sequences with logits processors (grammars) do not draft."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

from backends.base import BackendError, Chunk, Preparable
from backends.engine_thread import Job, Outbox
from backends.llamacpp.engine import LlamaEngine
from backends.llamacpp.prompt_store import PromptStore, State, common_prefix, new_buffer
from backends.llamacpp.sampler import SamplerChain, sampler_steps
from backends.llamacpp.sequence import Phase, Sequence
from backends.logprobs import entry, first_prompt_entry
from backends.lookup import MATCH_CAP, Acceptance, History, Lookup, StepCost, passes, pick_source, plan_drafts
from backends.sampling import constrain
from backends.textstream import TextStream

_MIN_REUSE = 8  # a shared prefix shorter than this (a BOS, a word) is not worth a slot's cache
_MIN_COPY = 64  # the shortest prefix worth a copy of another slot's stream
# A sequence whose matches are not worth drafting drafts one token every this many of
# them anyway, so its record follows the text (a copy may begin): at most one
# two-row step in 64 where nothing is ever kept.
_PROBE_EVERY = 64
_PRIOR_WEIGHT = 2.0  # before any evidence, Laplace's rule of succession: a match that
# held for L tokens holds for the next with probability (L + 1) / (L + 2), worth 2 tokens
_OWN_WEIGHT = 4.0  # the scheduler-wide rate counts as this many of a sequence's own tokens


class Scheduler:
    def __init__(
        self,
        engine: LlamaEngine,
        n_parallel: int,
        prefix_cache: bool,
        draft_max: int = 0,
        prompt_chunk: int = 0,
        store: PromptStore | None = None,
        history: int = 0,
    ) -> None:
        self.engine = engine
        self.store = store if prefix_cache else None  # prompts' KV in host memory, past the slots
        self.n_parallel = n_parallel
        # Prompt tokens of the standard and batch classes a step may take (0: the whole
        # n_batch). Small, a step stays short, so an interactive prompt, which still takes
        # the whole budget, waits little for the step under way.
        self.prompt_chunk = prompt_chunk or engine.config.n_batch
        self.prefix_cache = prefix_cache
        self.draft_max = draft_max  # draft tokens per sequence per step; 0: no speculation
        self.drafts = self.draft_tokens = self.accepted_tokens = 0  # verification passes, drafted, kept
        self.cost = StepCost()  # what a decode step costs by its rows, for whether drafts pay
        # Whether prompts that arrive together share a step (see `_step`): where the
        # weights are on a GPU, which computes a step of many rows in about the time
        # of one; on a CPU, where each prompt row costs the same in any step, each
        # takes its own.
        self.prompts_share_steps = engine.config.n_gpu_layers != 0
        self.acceptance = Acceptance()  # draft tokens kept by match length, every sequence
        # Finished requests' texts, to draft from when a request comes again (0: off).
        self.history = History(history) if draft_max and history else None
        # A copy between streams moves a whole stream: worth it past a prefix this long
        # (measured ~60 ms to copy SmolLM2's 2,048 cells on 2 cores, where computing 64
        # prompt tokens takes ~250 ms).
        self.min_share = 1 if engine.config.kv_unified else _MIN_COPY
        self.arrivals = 0
        self.cache_queries = 0  # prompt tokens looked up in the prefix cache
        self.cache_hits = 0  # of those, tokens whose KV was reused
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.running: list[Sequence] = []
        self.free_slots: deque[int] = deque(range(n_parallel))  # least recently freed first
        self.slot_tokens: list[list[int]] = [[] for _ in range(n_parallel)]  # KV held by each slot
        self.generated_tokens = 0
        self._stopping = False
        self._mask_thread: ThreadPoolExecutor | None = None  # started by the first constrained sequence
        self.outbox = Outbox()
        self._thread = threading.Thread(target=self._loop, name="llamacpp-scheduler", daemon=True)
        self._calibrated = threading.Event()

    # -- called from the event loop --------------------------------------------------

    def start(self) -> None:
        """Start the loop; with speculation, return once it has timed its step sizes
        (`_calibrate`, on the loop's own thread: llama.cpp's CPU threads belong to the
        thread that decodes, and a decode from any other thread left every later
        step ~25% slower, measured on Qwen2.5-0.5B)."""
        self._thread.start()
        self._calibrated.wait()

    def stop(self) -> None:
        self.jobs.put(None)
        self._thread.join()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    @property
    def kv_cells_used(self) -> int:
        """Cells held by running sequences, a shared one counted once (a finished one's
        reusable prefix is not counted)."""
        return sum(seq.n_cached - seq.borrowed for seq in list(self.running))

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            if self.draft_max:
                self._calibrate()
        finally:
            self._calibrated.set()
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
                free = list(self.free_slots)
                try:
                    self.running.append(self._place(job))
                except Exception as exc:  # a failure placing a request ends it, not the thread
                    for slot in set(free) - set(self.free_slots):  # cells it may have half written
                        self.engine.free_sequence(slot)
                        self.slot_tokens[slot] = []
                    self.free_slots = deque(free)
                    self.outbox.put(job, BackendError(f"llama.cpp failed: {exc}"))

    def _place(self, job: Job) -> Sequence:
        """A slot for the job: the one whose cached tokens share the longest prefix
        with its prompt (its KV is reused), else the one that keeps slots packed."""
        prompt = job.req.prompt_tokens
        busy = {seq.slot for seq in self.running}
        if self.engine.config.kv_unified:
            packed = self.free_slots[0]
        else:
            packed = min(self.free_slots, key=lambda c: 1 - ((c - 1) in busy) - ((c + 1) in busy))
        slot, reuse = packed, 0
        if self._cacheable(job):
            for candidate in self.free_slots:
                common = common_prefix(self.slot_tokens[candidate], prompt)
                if common > reuse:
                    slot, reuse = candidate, common
            if reuse < _MIN_REUSE:  # too short to be worth a slot out of the packing
                slot, reuse = packed, 0
        stored = self.store.longest(prompt) if self.store is not None and self._cacheable(job) else None
        self.free_slots.remove(slot)
        self._store(slot, reuse, reading=stored[1] if stored is not None else None)
        if stored is not None and stored[0] >= reuse + _MIN_REUSE:
            # A restore replaces the slot's cells: when llama.cpp finds no room for it
            # (one unified stream, full), the slot holds nothing any more.
            reuse = stored[0] if self.engine.restore_sequence(stored[1], slot) else 0
        reuse = min(reuse, len(prompt) - 1)  # the last prompt token is evaluated for its logits
        self.engine.free_sequence(slot, start=reuse)
        self.slot_tokens[slot] = prompt[:reuse]
        params = job.req.params
        steps = sampler_steps(params, penalty_window=self.engine.n_ctx_seq)
        sampler = SamplerChain(steps, self.engine.n_vocab)
        seq = Sequence(job, slot, sampler, TextStream(stop=list(params.stop)), n_cached=reuse, arrival=self.arrivals)
        self.arrivals += 1
        if params.prompt_logprobs is not None:
            seq.prompt_logprobs = [first_prompt_entry(prompt, self.engine.piece)]
        if self.prefix_cache:
            self.cache_queries += len(prompt)
            self.cache_hits += reuse
        return seq

    def _store(self, slot: int, keep: int, *, reading: State | None = None) -> None:
        """Save what a slot holds to the prompt store before a new prompt overwrites
        its cells past `keep` (nothing when that is too little, or stored already);
        `reading`: the stored state the new prompt restores next, whose buffer this save
        must not be written into."""
        tokens = self.slot_tokens[slot]
        if self.store is None or len(tokens) - keep < _MIN_REUSE or tokens in self.store:
            return
        size = self.engine.state_size(slot)
        spare = self.store.reserve(size, keep=reading)
        self.store.put(tokens, self.engine.save_sequence(slot, spare if spare is not None else new_buffer(size)))

    def _cacheable(self, job: Job) -> bool:
        # Prompt logprobs need every prompt token's logits: such a prompt is computed whole.
        return self.prefix_cache and job.req.params.prompt_logprobs is None

    def _catch_up(self, seq: Sequence) -> bool:
        """Before a prefilling sequence computes its next chunk: take the cells of the
        longest prefix of its prompt that any other slot holds; then say whether it
        should wait, because an earlier sequence is still computing more of its prompt."""
        prompt = seq.prompt
        limit = len(prompt) - 1  # the last prompt token is evaluated for its logits
        if not self._cacheable(seq.job) or seq.n_cached >= limit:
            return False
        for o in self.running:
            if o.arrival < seq.arrival and o.phase is Phase.PREFILL and o.n_cached < limit:
                shared = min(common_prefix(o.prompt, prompt), limit)
                if o.n_cached < shared and shared >= seq.n_cached + self.min_share:
                    return True  # it is computing what this one would: wait, then take it
        source, best = -1, seq.n_cached
        holders = [(o.slot, o.cached_tokens) for o in self.running if o is not seq]
        holders += [(slot, self.slot_tokens[slot]) for slot in self.free_slots]
        for slot, tokens in holders:
            if len(tokens) > best and (n := common_prefix(tokens, prompt)) > best:
                source, best = slot, n
        best = min(best, limit)
        if source >= 0 and best >= seq.n_cached + self.min_share:
            self.engine.share(source, seq.slot, best)
            self.cache_hits += best - seq.n_cached
            seq.borrowed = best if self.engine.config.kv_unified else 0
            seq.n_cached = best
        return False

    def _step(self) -> None:
        e = self.engine
        # What each sequence contributes: decoding ones their next token first, then
        # prefilling ones prompt chunks within the budget.
        work: dict[int, tuple[Sequence, list[int], list[bool]]] = {}
        sampling: list[Sequence] = []  # the sequences that draw a token after this decode
        prefilling = [s for s in self.running if s.phase is Phase.PREFILL]
        if self.prefix_cache:
            prefilling = [s for s in prefilling if not self._catch_up(s)]
        prefilling.sort(key=lambda s: s.job.req.priority)
        first_class = prefilling[0].job.req.priority if prefilling else 1
        decoding = [seq for seq in self.running if seq.phase is Phase.DECODE]
        if first_class == 0:  # an interactive prompt: its step is its own and its class's
            decoding = [seq for seq in decoding if seq.job.req.priority == 0]
        if self.draft_max:
            self._draft(decoding, e.config.n_batch // 2 - len(decoding))  # drafts may take up to half the step
        for seq in decoding:
            next_rows = [seq.generated[-1], *seq.drafts]
            work[seq.slot] = (seq, next_rows, [True] * len(next_rows))
            sampling.append(seq)
        budget = e.config.n_batch - sum(len(batch_tokens) for _, batch_tokens, _ in work.values())
        # Prompts by class (interactive first), in arrival order within one; while an
        # interactive prompt is being read, it has the step's prompt budget to itself,
        # so its first token does not wait for a batch of other prompts; the other
        # classes' prompts take at most `prompt_chunk` a step. A prompt whose prefix an
        # earlier one is computing waits for it (see the module's docstring).
        others = self.prompt_chunk  # what is left of it this step
        # On a CPU a step that gives a prompt its first token takes no further prompt:
        # the first tokens of prompts that arrive together then come one prompt's
        # compute apart, not all after the last, at about the same tokens/s (seven
        # ~35-token prompts after a shared 900, SmolLM2 on 2 cores: one step of all
        # seven, 1.03 s; one of them alone, 0.15 s). Lines fitted to measured step
        # times did not decide it well: a prompt row's cost grows with the context it
        # attends to, which a step's row count does not say.
        finishing = False
        for seq in prefilling:
            if first_class == 0 and seq.job.req.priority > 0:
                break
            take = budget if seq.job.req.priority == 0 else min(budget, others)
            if take > 0:
                chunk = seq.prompt[seq.n_cached : seq.n_cached + take]
                if finishing and not self.prompts_share_steps:
                    break
                last = seq.n_cached + len(chunk) == len(seq.prompt)
                finishing = finishing or last
                flags = [seq.prompt_logprobs is not None] * len(chunk)
                flags[-1] = flags[-1] or last
                work[seq.slot] = (seq, chunk, flags)
                budget -= len(chunk)
                if seq.job.req.priority > 0:
                    others -= len(chunk)
                if last and seq.job.req.params.max_tokens > 0:
                    sampling.append(seq)

        # On a CPU with a stream per slot, the prompt that gets its first token this step
        # is decoded first, on its own, and that token handed out before the other rows
        # are: llama.cpp would run them as weight passes of their own anyway (`passes`),
        # so this costs one more call, not another pass, and the first token comes the
        # decode rows' pass sooner (~40-60 ms of a ~140 ms step for SmolLM2 at ~1,100
        # cells on 2 cores). Everyone's tokens but its own come when they did.
        parts = [work]
        first = next((slot for slot, (seq, _, _) in work.items() if seq in sampling and seq.phase is Phase.PREFILL), -1)
        split = not self.prompts_share_steps and not e.config.kv_unified
        if split and first >= 0 and len(work) > 1:
            parts = [{first: work.pop(first)}, work]
        masks = self._prepare_masks(sampling)
        for part in parts:
            started = time.perf_counter()
            rows = self._decode(part)
            if masks is not None:
                masks.result()
            for seq, row, count in rows:
                self._advance(seq, row, count)
            if len(parts) > 1:
                self.outbox.flush()  # this part's tokens go out while the next decodes
            # Timed by its rows: a step of decode rows only (prompt chunks run cheaper per
            # row) in one weight pass (with a stream per slot, slots whose rows differ split it).
            if self.draft_max and len(rows) == len(decoding) and len(parts) == 1:
                streams = None if e.config.kv_unified else sorted(part)
                if len(passes([count for _, _, count in rows], streams)) == 1:
                    self.cost.record(sum(count for _, _, count in rows), time.perf_counter() - started)

    def _decode(self, work: dict[int, tuple[Sequence, list[int], list[bool]]]) -> list[tuple[Sequence, int, int]]:
        """One `llama_decode` of these rows, listed in slot order (see the module's
        docstring); for each sequence, its first row and its row count."""
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        wants: list[bool] = []
        rows: list[tuple[Sequence, int, int]] = []
        for slot in sorted(work):
            seq, batch_tokens, flags = work[slot]
            rows.append((seq, len(tokens), len(batch_tokens)))
            tokens.extend(batch_tokens)
            positions.extend(range(seq.n_cached, seq.n_cached + len(batch_tokens)))
            slots.extend([slot] * len(batch_tokens))
            wants.extend(flags)
        self.engine.decode(tokens, positions, slots, wants)
        return rows

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

    def _draft(self, decoding: list[Sequence], room: int) -> None:
        """This step's draft tokens for each decoding sequence: what followed the latest
        earlier occurrence of its last tokens, as many as pay (see the module's docstring)."""
        # For each: the History text its draft comes from or -1 (its own), where the
        # draft starts, the rate its tokens are kept at, the most it may draft (0: none).
        candidates: list[tuple[int, int, float, int]] = []
        for seq in decoding:
            seq.drafts = []
            candidates.append((-1, 0, 0.0, 0))
            params = seq.job.req.params
            if params.logits_processors:
                continue
            if seq.lookup is None or seq.acceptance is None:  # made when first asked
                seq.lookup, seq.acceptance = Lookup(seq.prompt + seq.generated, substitutions=True), Acceptance()
            found = self.history.match(seq.lookup.tokens) if self.history is not None else (-1, 0, 0)
            text, at, length, rate = pick_source(seq.lookup.match(), found, partial(self._rate, seq))
            left = min(params.max_tokens - len(seq.generated), self.engine.n_ctx_seq - seq.n_cached - 1) - 1
            if text >= 0 and self.history is not None:
                left = min(left, self.history.available(text, at))
            if length and left > 0:
                seq.match, seq.history_text = length, text
                candidates[-1] = (text, at, rate, min(self.draft_max, left))
        # With a stream per slot, slots whose rows differ in number split the step into passes.
        slots = None if self.engine.config.kv_unified else [seq.slot for seq in decoding]
        plan = plan_drafts([(rate, cap) for *_, rate, cap in candidates], self.cost, slots)
        for seq, (text, at, _, cap), k in zip(decoding, candidates, plan, strict=True):
            if not cap:
                continue
            if not k:
                seq.unpriced += 1
                if seq.unpriced < _PROBE_EVERY:
                    continue
                k = 1
            k = min(k, cap, room)
            if k > 0:
                assert seq.lookup is not None
                if text >= 0 and self.history is not None:
                    seq.drafts = self.history.draft(text, at, k)
                else:
                    seq.drafts = seq.lookup.draft(at, k)
                seq.unpriced = 0
                room -= k

    def _rate(self, seq: Sequence, length: int, source: int) -> float:
        """The chance a draft token is kept after a match this long in this source: the
        sequence's own record over the scheduler's, over Laplace's rule."""
        assert seq.acceptance is not None
        shared = self.acceptance.rate(length, (length + 1) / (length + 2), _PRIOR_WEIGHT, source)
        return seq.acceptance.rate(length, shared, _OWN_WEIGHT, source)

    def _calibrate(self) -> None:
        """Time decode steps of a ladder of sizes on an empty slot, before the first
        job, so the first drafts are priced by this machine's costs (`StepCost`). The
        first decode, which also sets llama.cpp up, is not timed. Sizes up to 32 rows
        are timed twice, up the ladder and down, and the quicker time kept: noise only
        adds time, a hiccup weighs most on a short step, and a size timed too dear once
        is never drafted to, so never timed again. Over five starts of Qwen2.5-0.5B on
        2 cores (benchmarks/calibration.py), 16 rows took 88-144 ms on one pass, 77-105
        on two; 32 rows 171-191 and 156-170 ms. The second pass adds ~0.5 s to its start."""
        slot, e = 0, self.engine
        ladder = [n for n in StepCost.CALIBRATION if n <= min(e.config.n_batch, e.n_ctx_seq)]
        tokens = [e.bos_id if e.bos_id >= 0 else 0] * max(ladder)
        e.decode(tokens[:1], [0], [slot], [True])
        e.free_sequence(slot)
        quickest: dict[int, float] = {}
        for rows in [*ladder, *reversed([n for n in ladder if n <= 32])]:
            started = time.perf_counter()
            e.decode(tokens[:rows], list(range(rows)), [slot] * rows, [True] * rows)
            quickest[rows] = min(quickest.get(rows, float("inf")), time.perf_counter() - started)
            e.free_sequence(slot)
        for rows, seconds in quickest.items():
            self.cost.record(rows, seconds)

    def _verify(self, seq: Sequence, first: int) -> None:
        """Sample the rows of a sequence's next token and its drafts, in order, keeping
        drafts while they equal what was sampled (see the module's docstring)."""
        drafts, start = seq.drafts, seq.n_cached  # start: the position of its next token
        seq.drafts = []
        kept = 0
        for i in range(len(drafts) + 1):
            seq.n_cached = start + 1 + i  # the cells of the next token and the drafts kept so far
            token = self._sample(seq, first + i)
            if seq.phase is Phase.FINISHED or i == len(drafts) or token != drafts[i]:
                break
            kept += 1
        self.engine.free_sequence(seq.slot, start + 1 + kept)  # the rejected drafts' cells
        self.drafts += 1
        self.draft_tokens += len(drafts)
        self.accepted_tokens += kept
        # Tested: the kept tokens and the one that differed; none past it, nor past the end.
        tested = kept + (kept < len(drafts) and seq.phase is not Phase.FINISHED)
        if tested and seq.acceptance is not None:
            source = int(seq.history_text >= 0)
            seq.acceptance.record(seq.match, kept, tested, source)
            self.acceptance.record(seq.match, kept, tested, source)

    def _advance(self, seq: Sequence, first: int, count: int) -> None:
        """Account for the rows just evaluated, then sample where the sequence needs a token."""
        e = self.engine
        params = seq.job.req.params
        if seq.drafts:
            self._verify(seq, first)
            return
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

    def _sample(self, seq: Sequence, row: int) -> int:
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
        if seq.lookup is not None:
            seq.lookup.extend([token])
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
        return token

    def _finish(self, seq: Sequence, *, keep_cache: bool = True) -> None:
        """Free the slot. Its KV cells stay for prefix reuse (they are overwritten from
        the first differing token), or go at once when caching is off."""
        seq.phase = Phase.FINISHED
        seq.sampler.close()
        self.running.remove(seq)
        if self.history is not None and seq.generated:
            # The output, and enough of the prompt before it to match and measure a
            # match on: the prompt itself is its sequence's own to draft from.
            self.history.add(seq.prompt[-MATCH_CAP - 1 :] + seq.generated)
        if keep_cache and self.prefix_cache:
            self.slot_tokens[seq.slot] = seq.cached_tokens
        else:
            self.engine.free_sequence(seq.slot)
            self.slot_tokens[seq.slot] = []
        self.free_slots.append(seq.slot)
