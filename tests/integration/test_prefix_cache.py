"""The prefix cache shared across slots: a prompt takes the KV of the longest prefix
any slot holds (a copy of that slot's stream, or the cells themselves in one unified
stream), waits for an earlier prompt computing the same prefix, and the KV it gets
is the KV it would have computed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from backends.base import BackendError, GenerationRequest, SamplingParams
from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.engine import EngineConfig, LlamaEngine
from backends.llamacpp.prompt_store import Buffer, PromptStore, State
from compressed_models.catalog import resolve
from tests.llama_recording import RecordingEngine, collect_chunks, prefilled, recording_backend
from tests.server import wait_until

PATH = str(resolve("smollm2-135m-instruct-q4_1"))


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppBackend]:
    yield from recording_backend(monkeypatch, n_parallel=4, n_batch=32)


@pytest.mark.parametrize("unified", [False, True], ids=["streams", "unified"])
@pytest.mark.parametrize("held", [0, 40], ids=["from-nothing", "from-a-part"])
def test_a_shared_prefix_gives_the_very_same_logits(unified: bool, held: int) -> None:
    """Sequence 0 computes a prompt; sequence 1 (holding its first `held` tokens, computed
    itself) takes the rest from it; then the same question, at the same positions, in
    the same one-row batches, gives sequence 1 the logits it gives sequence 0."""
    engine = LlamaEngine(EngineConfig(PATH, 512, 512, 2, 2, 2, 0, True, None, False, kv_unified=unified))
    try:
        prompt = engine.tokenize(SYSTEM)
        question = engine.tokenize(QUESTIONS[0], add_special=False)
        n = len(prompt)
        engine.decode(prompt, list(range(n)), [0] * n, [False] * n)
        if held:
            engine.decode(prompt[:held], list(range(held)), [1] * held, [False] * held)
        engine.share(0, 1, n)

        def ask(seq: int) -> np.ndarray:
            for i, token in enumerate(question):
                engine.decode([token], [n + i], [seq], [True])
            return np.array(engine.logits(0))

        taken, computed = ask(1), ask(0)
    finally:
        engine.close()
    if unified:  # the same cells, but the question's own cells lie elsewhere: reductions may round apart
        np.testing.assert_allclose(taken, computed, atol=1e-3)
    else:  # a copy of the stream: the same data in the same cells, bit for bit
        assert np.array_equal(taken, computed)


SYSTEM = (
    "You are the assistant of a small public library in a coastal town. You answer questions from"
    " visitors about opening hours, borrowing rules, the reading room, the children's corner and the"
    " local history archive. The library opens at nine in the morning and closes at six in the evening"
    " on weekdays; on Saturdays it closes at one. Visitors may borrow up to five books for three weeks."
    " Keep every answer to one short, friendly sentence."
)
QUESTIONS = [" Why is the sky blue?", " What is two plus two?", " Name a large city.", " Who wrote Hamlet?"]


Output = tuple[list[int], dict[int, float]]  # greedy tokens; the first one's top-5 logprobs


def _greedy(backend: LlamaCppBackend, prompts: list[list[int]], *, cancel_first: bool = False) -> list[Output]:
    """Every prompt sent at once (greedy, 10 tokens); with `cancel_first` the first
    one's consumer leaves once the engine has run a step of it."""
    params = SamplingParams(max_tokens=10, temperature=0, logprobs=5)

    async def one(prompt: list[int]) -> Output:
        chunks = await collect_chunks(backend.generate(GenerationRequest("r", prompt, params)))
        first = chunks[0].logprobs[0]  # type: ignore[attr-defined]
        return [t for c in chunks for t in c.token_ids], {t.token_id: t.logprob for t in first.top}  # type: ignore[attr-defined]

    async def run() -> list[Output]:
        tasks = [asyncio.create_task(one(p)) for p in prompts]
        if cancel_first:
            while not RecordingEngine.steps:
                await asyncio.sleep(0.001)
            tasks[0].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return [r if isinstance(r, tuple) else ([], {}) for r in done]

    return asyncio.run(run())


def _solo(prompts: list[list[int]]) -> list[Output]:
    fresh = LlamaCppBackend(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=512, n_parallel=1, prefix_cache=False)
    asyncio.run(fresh.start())
    try:
        return [_greedy(fresh, [p])[0] for p in prompts]
    finally:
        asyncio.run(fresh.stop())


def _same_answers(shared: list[Output], solo: list[Output]) -> None:
    """Each answer starts as it does alone. Only the start: a batch of other rows rounds
    a little differently (first-token logprobs move by up to ~0.3 between batch shapes,
    measured with the cache off too), so later tokens may part at a near tie; that the
    shared KV is the very KV is `test_a_shared_prefix_gives_the_very_same_logits`."""
    for (tokens, top), (solo_tokens, solo_top) in zip(shared, solo, strict=True):
        assert tokens[0] == solo_tokens[0]
        assert abs(top[tokens[0]] - solo_top[tokens[0]]) < 0.5, (top, solo_top)


def test_concurrent_prompts_with_one_system_prompt_compute_it_once(small_batches: LlamaCppBackend) -> None:
    """Four requests arrive together: the first computes the system prompt, the others
    wait for it and take a copy of its KV."""
    backend = small_batches
    system = backend.tokenize(SYSTEM)
    prompts = [system + backend.tokenize(q, bos=False) for q in QUESTIONS]
    assert len(system) > 64  # worth a copy of a stream (the scheduler's _MIN_COPY)
    before = backend.stats().prefix_cache
    assert before is not None
    outputs = _greedy(backend, prompts)
    evaluated = prefilled(RecordingEngine.steps)
    assert evaluated < len(system) + 4 * 16  # the system prompt once, then each question
    after = backend.stats().prefix_cache
    assert after is not None
    assert after.queries - before.queries == sum(map(len, prompts))
    assert after.hits - before.hits >= 3 * (len(system) - 1)
    _same_answers(outputs, _solo(prompts))


def test_a_cancelled_first_prompt_leaves_the_ones_waiting_on_it_to_finish(small_batches: LlamaCppBackend) -> None:
    backend = small_batches
    system = backend.tokenize(SYSTEM)
    prompts = [system + backend.tokenize(q, bos=False) for q in QUESTIONS[:3]]
    outputs = _greedy(backend, prompts, cancel_first=True)
    assert outputs[0] == ([], {})  # cancelled
    _same_answers(outputs[1:], _solo(prompts[1:]))
    assert wait_until(lambda: backend.stats().running == 0)


@pytest.fixture
def unified(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppBackend]:
    yield from recording_backend(monkeypatch, n_parallel=4, n_batch=32, kv_unified=True)


def test_one_unified_kv_stream_holds_a_shared_prefix_once(unified: LlamaCppBackend) -> None:
    """kv_unified: the followers take the first prompt's cells themselves (no copy), and
    the KV in use counts them once."""
    backend = unified
    system = backend.tokenize(SYSTEM)
    prompts = [system + backend.tokenize(q, bos=False) for q in QUESTIONS]
    params = SamplingParams(max_tokens=200, ignore_eos=True)
    usage: list[float] = []

    async def run() -> None:
        streams = [backend.generate(GenerationRequest("r", p, params)) for p in prompts]
        tasks = [asyncio.create_task(collect_chunks(s)) for s in streams]
        while backend.stats().generated_tokens < 4 * 20:
            await asyncio.sleep(0.001)
        usage.append(backend.stats().kv_cache_usage or 0.0)
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert prefilled(RecordingEngine.steps) < len(system) + 4 * 16
    # Held once: the system prompt, four questions and ~20 tokens each, of 4 x 512 cells.
    assert usage[0] * 4 * 512 < len(system) + 4 * (16 + 40)


@pytest.mark.parametrize("store_mib", [16, 0], ids=["store", "no-store"])
def test_a_prompt_whose_slot_was_taken_comes_back_from_the_prompt_store(
    monkeypatch: pytest.MonkeyPatch, store_mib: int
) -> None:
    """One slot: a prompt, again (its slot still holds it: only the last token is
    computed), another prompt over its cells, then the first once more. With the host
    store its KV was saved before it was overwritten and is restored: the last token
    alone is computed, and the answer is the one from the slot, logprobs bit for bit.
    Without it, the whole prompt is computed again, as the first time."""
    for backend in recording_backend(monkeypatch, n_parallel=1, cache_ram_mib=store_mib):
        first, other = backend.tokenize(SYSTEM + QUESTIONS[0]), backend.tokenize(QUESTIONS[1] * 8)
        computed_whole = _greedy(backend, [first])
        from_slot = _greedy(backend, [first])
        _greedy(backend, [other])
        RecordingEngine.steps = []
        again = _greedy(backend, [first])
        computed = sum(n for n in RecordingEngine.steps[0].values())
        if store_mib:
            assert computed == 1 and again == from_slot
        else:
            assert computed == len(first) and again == computed_whole


def test_a_save_written_over_a_displaced_entry_restores_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store with room for one saved prompt (1 MiB; SmolLM2 keeps ~23 KB a token):
    B's save displaces A's and is written into A's buffer, whose pages are touched
    already. B then comes back from that buffer (C's save, which displaces it, takes
    a new one): one token computed, the answer the slot gave, logprobs bit for bit."""
    spares: list[Buffer | None] = []
    reserve = PromptStore.reserve

    def recorded(self: PromptStore, size: int, keep: State | None = None) -> Buffer | None:
        spares.append(reserve(self, size, keep))
        return spares[-1]

    monkeypatch.setattr(PromptStore, "reserve", recorded)
    for backend in recording_backend(monkeypatch, n_parallel=1, cache_ram_mib=1):
        a = backend.tokenize(SYSTEM)[:30]  # with its answer, 39 cells: ~0.9 MB
        b, c = backend.tokenize(QUESTIONS[1] * 8)[:25], backend.tokenize(QUESTIONS[2] * 8)[:20]
        _greedy(backend, [a])
        _greedy(backend, [b])  # A saved: a new buffer
        from_slot = _greedy(backend, [b])
        _greedy(backend, [c])  # B saved into A's buffer, A gone
        RecordingEngine.steps = []
        again = _greedy(backend, [b])  # C's save displaces B, but not into B's buffer: B is read next
        assert sum(n for n in RecordingEngine.steps[0].values()) == 1 and again == from_slot
    assert [spare is not None for spare in spares] == [False, True, False], spares


def test_a_restore_that_finds_no_room_computes_the_prompt_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp may find no room for a stored sequence (one unified stream, full): the
    slot then holds nothing, and the prompt is computed from its start, not from
    cells that are gone."""

    def no_room(self: LlamaEngine, state: State, seq_id: int) -> bool:
        self.free_sequence(seq_id)
        return False

    monkeypatch.setattr(RecordingEngine, "restore_sequence", no_room)
    for backend in recording_backend(monkeypatch, n_parallel=1, cache_ram_mib=16):
        first = backend.tokenize(SYSTEM + QUESTIONS[0])
        computed_whole = _greedy(backend, [first])
        _greedy(backend, [first[:40] + backend.tokenize(QUESTIONS[1] * 8, bos=False)])  # keeps 40, stores the rest
        RecordingEngine.steps = []
        assert _greedy(backend, [first]) == computed_whole
        assert sum(n for n in RecordingEngine.steps[0].values()) == len(first)


def test_a_failure_while_placing_a_request_ends_that_request_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails as a prompt takes its slot (here the host store's) is that
    request's error; the slot is freed and emptied, and the next request is served."""
    calls: list[int] = []
    reserve = PromptStore.reserve

    def fails_once(self: PromptStore, size: int, keep: State | None = None) -> Buffer | None:
        calls.append(size)
        if len(calls) == 1:
            raise MemoryError("no room")
        return reserve(self, size, keep)

    monkeypatch.setattr(PromptStore, "reserve", fails_once)
    for backend in recording_backend(monkeypatch, n_parallel=1, cache_ram_mib=16):
        first, other = backend.tokenize(SYSTEM + QUESTIONS[0]), backend.tokenize(QUESTIONS[1] * 8)
        computed_whole = _greedy(backend, [first])
        request = GenerationRequest("r", other, SamplingParams(max_tokens=4))
        with pytest.raises(BackendError, match="no room"):  # the slot's prompt is saved first: that fails
            asyncio.run(collect_chunks(backend.generate(request)))
        assert backend.stats().running == 0
        RecordingEngine.steps = []
        assert _greedy(backend, [first]) == computed_whole  # the emptied slot: computed whole again
        assert sum(n for n in RecordingEngine.steps[0].values()) == len(first)
