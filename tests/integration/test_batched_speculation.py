"""Prompt-lookup speculation inside the continuous batcher (`speculate: ngram`): drafts
from a sequence's own text, verified in the step's one batch, give exactly the
output without speculation, greedy or seeded; a grammar-constrained sequence never
drafts; drafts past a finish or a cancel leave no cells behind. (When a sequence
drafts and how much: tests/unit/test_speculative_verify.py; what speculation costs
text with nothing to copy: benchmarks/batched_speculation.py.) A request sent again
has its earlier answer drafted from the scheduler's history of finished requests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from backends.base import GenerationRequest, SamplingParams
from backends.llamacpp.backend import LlamaCppBackend, LlamaCppConfig
from compressed_models.catalog import resolve
from tests.llama_recording import RecordingEngine, collect_chunks, recording_backend
from tests.logits_processors import AllowOnly, digit_tokens
from tests.server import wait_until

PATH = str(resolve("smollm2-135m-instruct-q4_1"))
COPY = [  # text whose continuation repeats what came before it
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n"
    "    return a * b\n\n\ndef add(a, b):\n",
    "Copy the text exactly.\nText: The library opens at nine in the morning and closes at six in the evening"
    " on weekdays; on Saturdays it closes at one.\nCopy: The library opens",
]


@pytest.fixture(scope="module")
def plain() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(PATH, n_ctx=512, n_parallel=2)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.stop())


@pytest.fixture
def speculating(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppBackend]:
    yield from recording_backend(monkeypatch, n_parallel=2, speculate="ngram")


def _tokens(backend: LlamaCppBackend, prompt: str, params: SamplingParams) -> list[int]:
    async def run() -> list[int]:
        chunks = await collect_chunks(backend.generate(GenerationRequest("r", backend.tokenize(prompt), params)))
        return [t for c in chunks for t in c.token_ids]  # type: ignore[attr-defined]

    return asyncio.run(run())


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "seeded"])
def test_copying_text_is_drafted_and_the_output_is_the_one_without_drafts(
    plain: LlamaCppBackend, speculating: LlamaCppBackend, temperature: float
) -> None:
    params = SamplingParams(max_tokens=48, temperature=temperature, seed=7)
    for prompt in COPY:
        RecordingEngine.steps = []
        assert _tokens(speculating, prompt, params) == _tokens(plain, prompt, params)
        decode_steps = len(RecordingEngine.steps) - 1  # less the prompt's
        assert decode_steps < 48  # several tokens came out of some steps
    stats = speculating.stats().speculative
    assert stats is not None and stats.accepted_tokens >= 5 and stats.draft_tokens > stats.accepted_tokens


def test_a_request_sent_again_has_its_earlier_answer_drafted(speculating: LlamaCppBackend) -> None:
    """Prose the model does not copy from its prompt: the first time, few of its steps
    draft; sent again, the answer it gave is drafted from the history and kept, so the
    same tokens come out of a handful of steps."""
    prompt = "Once upon a time, in a small village by the sea, there lived"
    params = SamplingParams(max_tokens=48, ignore_eos=True, temperature=0)
    first = _tokens(speculating, prompt, params)
    first_steps, RecordingEngine.steps = len(RecordingEngine.steps), []
    before = speculating.stats().speculative
    again = _tokens(speculating, prompt, params)
    after = speculating.stats().speculative
    assert again == first
    assert before is not None and after is not None
    assert after.accepted_tokens - before.accepted_tokens >= 40  # nearly all of it drafted and kept
    assert len(RecordingEngine.steps) < min(12, first_steps // 2)


def test_a_constrained_sequence_does_not_draft(speculating: LlamaCppBackend) -> None:
    digits = digit_tokens(speculating)
    allow = AllowOnly(digits)
    params = SamplingParams(max_tokens=24, ignore_eos=True, temperature=0, logits_processors=(allow,))
    out = _tokens(speculating, "1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3,", params)
    assert len(out) == 24 and set(out) <= digits
    stats = speculating.stats().speculative
    assert stats is not None and stats.draft_tokens == 0


def test_drafts_past_the_end_leave_no_cells(speculating: LlamaCppBackend) -> None:
    """A sequence that stops inside a step of drafts, and one cancelled while drafting:
    the engine comes back to no running sequence and no KV in use."""
    short = SamplingParams(max_tokens=5, temperature=0)
    _tokens(speculating, COPY[0], short)

    async def cancel() -> None:
        req = GenerationRequest("r", speculating.tokenize(COPY[1]), SamplingParams(max_tokens=200, temperature=0))
        stream = speculating.generate(req)
        async for _ in stream:
            stats = speculating.stats().speculative
            if stats is not None and stats.accepted_tokens > 0:
                break
        await stream.aclose()

    asyncio.run(cancel())
    assert wait_until(lambda: speculating.stats().running == 0 and speculating.stats().kv_cache_usage == 0)


def test_the_step_costs_drafts_are_priced_by_can_be_read(plain: LlamaCppBackend, speculating: LlamaCppBackend) -> None:
    """Timed at start (a ladder of sizes), what benchmarks/lookup_ceiling.py prices by."""
    assert plain.step_cost is None
    cost = speculating.step_cost
    assert cost is not None and cost.measured(1) is not None and cost.measured(8) is not None
    assert cost.cost(8) >= cost.cost(1) > 0


def test_speculation_runs_in_one_kv_stream_unless_told_otherwise(speculating: LlamaCppBackend) -> None:
    """With a stream per slot, llama.cpp splits a batch whose sequences bring unequal
    rows (one drafting, the others not) into several weight passes; one stream takes
    the step in one. So `kv_unified` left unset is on with speculation, off without,
    and what a config says is kept."""
    assert speculating._engine is not None and speculating._engine.config.kv_unified is True
    assert LlamaCppConfig(PATH).kv_unified is False
    assert LlamaCppConfig(PATH, speculate="ngram", kv_unified=False).kv_unified is False
    assert LlamaCppConfig(PATH, kv_unified=True).kv_unified is True


@pytest.fixture
def speculating_apart(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppBackend]:
    yield from recording_backend(monkeypatch, n_parallel=2, speculate="ngram", kv_unified=False)


def test_with_a_stream_per_slot_two_copies_drafted_together_are_each_its_own_output(
    plain: LlamaCppBackend, speculating_apart: LlamaCppBackend
) -> None:
    """Over separate KV streams drafts are planned by the weight passes they cause
    (`lookup.passes`); two copying requests at once still come out as each does alone."""
    backend = speculating_apart
    assert backend._engine is not None and backend._engine.config.kv_unified is False
    params = SamplingParams(max_tokens=40, temperature=0)
    alone = [_tokens(plain, prompt, params) for prompt in COPY]

    async def both() -> list[list[int]]:
        requests = [GenerationRequest(f"r{i}", backend.tokenize(p), params) for i, p in enumerate(COPY)]
        outputs = await asyncio.gather(*(collect_chunks(backend.generate(r)) for r in requests))
        return [[t for c in chunks for t in c.token_ids] for chunks in outputs]  # type: ignore[attr-defined]

    assert asyncio.run(both()) == alone
    stats = backend.stats().speculative
    assert stats is not None and stats.accepted_tokens >= 5
