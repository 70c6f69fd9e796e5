"""Continuous batching on the real model: concurrent sequences decode together yet
give their single-request outputs, a cancelled one leaves the others untouched and
frees its cells, long prompts are prefilled in chunks beside running decodes, and a
shared prefix is reused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from backends.base import Chunk, GenerationRequest, SamplingParams
from backends.llamacpp.backend import LlamaCppBackend
from compressed_models.catalog import resolve
from gateway.config import ModelConfig, Settings
from tests.conftest import SMOL
from tests.llama_recording import RecordingEngine, recording_backend
from tests.llama_recording import collect_chunks as _collect
from tests.logits_processors import AllowOnly, collect, digit_tokens
from tests.server import RunningServer, serve, wait_until

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The best way to learn a language",
    "In 1492,",
    "My favourite colour is",
    "Water boils at",
    "The quick brown fox",
]


def test_concurrent_greedy_outputs_equal_their_single_request_outputs(gateway: RunningServer) -> None:
    """Measured: 8 prompts x 48 tokens, 3 rounds, no token differs. Each sequence has
    its own KV stream (kv_unified off), so its rows do not see the others' cells."""
    assert gateway.router.get(SMOL).backend.stats().max_running == 8

    async def run() -> tuple[list[str], list[list[str]]]:
        client = openai.AsyncOpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)

        async def one(prompt: str) -> str:
            r = await client.completions.create(model=SMOL, prompt=prompt, max_tokens=48, temperature=0)
            return r.choices[0].text

        solo = [await one(p) for p in PROMPTS]
        rounds = [await asyncio.gather(*(one(p) for p in PROMPTS)) for _ in range(3)]
        return solo, rounds

    solo, rounds = asyncio.run(run())
    for together in rounds:
        assert together == solo


def test_cancelling_one_sequence_leaves_the_others_untouched(gateway: RunningServer) -> None:
    backend = gateway.router.get(SMOL).backend

    async def run() -> tuple[list[str], list[str], int]:
        client = openai.AsyncOpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)

        async def one(prompt: str) -> str:
            r = await client.completions.create(model=SMOL, prompt=prompt, max_tokens=40, temperature=0)
            return r.choices[0].text

        solo = [await one(p) for p in PROMPTS[:3]]
        before = backend.stats().generated_tokens

        async def abandoned() -> None:
            body = {"model": SMOL, "prompt": "Count:", "max_tokens": 400, "ignore_eos": True, "stream": True}
            async with httpx.AsyncClient(base_url=gateway.v1) as c, c.stream("POST", "/completions", json=body) as r:
                lines = r.aiter_lines()
                for _ in range(10):
                    await anext(lines)
            # leaving the block closes the connection mid-batch

        left = asyncio.create_task(abandoned())
        together = await asyncio.gather(*(one(p) for p in PROMPTS[:3]))
        await left
        return solo, together, before

    solo, together, before = asyncio.run(run())
    assert together == solo
    # Counted once the engine is idle: had the abandoned sequence run on, it would have made all 400.
    assert wait_until(lambda: backend.stats().running == 0 and backend.stats().kv_cache_usage == 0)
    assert backend.stats().generated_tokens - before < 400 + 3 * 40


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppBackend]:
    yield from recording_backend(monkeypatch, n_parallel=4, n_batch=32)


def test_a_long_prompt_is_prefilled_in_chunks_beside_running_decodes(small_batches: LlamaCppBackend) -> None:
    backend = small_batches
    short = GenerationRequest("short", backend.tokenize("Hi"), SamplingParams(max_tokens=30, ignore_eos=True))
    long_prompt = backend.tokenize("The history of the city begins with a small village. " * 20)[:200]
    assert len(long_prompt) == 200
    long = GenerationRequest("long", long_prompt, SamplingParams(max_tokens=2, temperature=0))

    async def run() -> None:
        first = asyncio.create_task(_collect(backend.generate(short)))
        while backend.stats().generated_tokens < 3:
            await asyncio.sleep(0.001)
        await asyncio.gather(first, _collect(backend.generate(long)))

    asyncio.run(run())
    steps = RecordingEngine.steps
    assert all(sum(step.values()) <= 32 for step in steps)  # the token budget holds
    prefill_steps = [s for s in steps if max(s.values()) > 1]
    assert len(prefill_steps) == -(-200 // 31)  # chunks of 31: the budget less the short one's token
    # Every step of that prefill also carried the short sequence's next token.
    assert all(sorted(s.values()) == [1, 31] for s in prefill_steps[:-1]), prefill_steps


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppBackend]:
    yield from recording_backend(monkeypatch, n_parallel=4, n_batch=32, prompt_chunk=8)


def test_other_prompts_take_prompt_chunk_and_an_interactive_one_a_step_of_its_own(chunked: LlamaCppBackend) -> None:
    """The interactive class's latency set-up: a standard prompt is read 8 tokens a
    step, so steps stay short; an interactive prompt takes the whole budget in steps
    that hold nothing else, so it waits only for the step under way."""
    backend = chunked
    text = "The history of the city begins with a small village. " * 20
    short = GenerationRequest("short", backend.tokenize("Hi"), SamplingParams(max_tokens=80, ignore_eos=True))
    long = GenerationRequest("long", backend.tokenize(text)[:200], SamplingParams(max_tokens=2, temperature=0))
    urgent_prompt = backend.tokenize("Answer at once: " + text)[:40]
    urgent = GenerationRequest("urgent", urgent_prompt, SamplingParams(max_tokens=2, temperature=0), priority=0)

    async def run() -> None:
        first = asyncio.create_task(_collect(backend.generate(short)))
        while backend.stats().generated_tokens < 3:
            await asyncio.sleep(0.001)
        second = asyncio.create_task(_collect(backend.generate(long)))
        while sum(1 for s in RecordingEngine.steps if s.get(1, 0) > 1) < 2:  # the long prompt is being read
            await asyncio.sleep(0.001)
        await asyncio.gather(_collect(backend.generate(urgent)), first, second)

    asyncio.run(run())
    steps = RecordingEngine.steps  # slots: short 0, long 1, urgent 2 (packed in arrival order)
    long_chunks = [s for s in steps if s.get(1, 0) > 1]
    assert sum(s[1] for s in long_chunks) == 200 and all(s[1] <= 8 for s in long_chunks), long_chunks
    assert all(s.get(0) == 1 for s in long_chunks[:-1])  # beside the short one's decode
    # The chunk that gives it its first token is decoded alone, the short one's row right after.
    last = max(i for i, s in enumerate(steps) if s.get(1, 0) > 1)
    assert steps[last] == long_chunks[-1] == {1: long_chunks[-1][1]} and steps[last + 1] == {0: 1}
    urgent_chunks = [s for s in steps if s.get(2, 0) > 1]
    assert urgent_chunks == [{2: 32}, {2: 8}], urgent_chunks  # the whole budget, nobody else's rows
    # ... and it came while the long prompt was still being read: that waited, then went on.
    first_urgent = steps.index(urgent_chunks[0])
    assert any(s.get(1, 0) > 1 for s in steps[:first_urgent]) and any(s.get(1, 0) > 1 for s in steps[first_urgent:])
    with pytest.raises(ValueError, match="prompt_chunk"):
        LlamaCppBackend(str(resolve("smollm2-135m-instruct-q4_1")), prompt_chunk=-1)


@pytest.mark.parametrize("share", [False, True], ids=["cpu", "prompts-share-steps"])
def test_prompts_that_arrive_together_get_first_tokens_a_step_apart_on_a_cpu(
    small_batches: LlamaCppBackend, share: bool
) -> None:
    """Three short prompts reach the scheduler together, while a step is held. On a
    CPU each is read in a step of its own, so the first gets its first token after
    one prompt's compute, not after all three; where steps are nearly free in their
    rows (a GPU: `prompts_share_steps`), one step takes all three. On a CPU the
    prompt's rows are decoded before the step's other rows, and its first token is
    handed to the event loop (the outbox flushed) before those are decoded."""
    backend = small_batches
    scheduler = backend._scheduler
    assert scheduler is not None and scheduler.prompts_share_steps is False  # the weights are on the CPU
    scheduler.prompts_share_steps = share
    flushed_after: list[int] = []  # how many decodes had run at each hand-off to the event loop
    flush = scheduler.outbox.flush

    def recorded_flush() -> None:
        flushed_after.append(len(RecordingEngine.steps))
        flush()

    scheduler.outbox.flush = recorded_flush  # type: ignore[method-assign]
    holder = GenerationRequest("holder", backend.tokenize("Hi"), SamplingParams(max_tokens=30, ignore_eos=True))
    prompts = [backend.tokenize(p) for p in PROMPTS[:3]]
    assert sum(len(p) for p in prompts) + 1 <= 32  # all three fit in one step's budget

    async def run() -> None:
        first = asyncio.create_task(_collect(backend.generate(holder)))
        while backend.stats().generated_tokens < 3:
            await asyncio.sleep(0.001)
        gate = RecordingEngine.gate = threading.Event()
        try:
            assert await asyncio.to_thread(RecordingEngine.held.wait, 30)  # a step waits: the three queue behind it
            RecordingEngine.steps = []
            params = SamplingParams(max_tokens=2, temperature=0)
            tasks = [
                asyncio.create_task(_collect(backend.generate(GenerationRequest(f"p{i}", p, params))))
                for i, p in enumerate(prompts)
            ]
            assert await asyncio.to_thread(wait_until, lambda: backend.stats().waiting == 3)
        finally:  # a failure here must not leave the engine's thread waiting forever
            RecordingEngine.gate = None
            gate.set()
        await asyncio.gather(first, *tasks)

    asyncio.run(run())
    reading = [[slot for slot, n in step.items() if slot != 0 and n > 1] for step in RecordingEngine.steps]
    reading = [slots for slots in reading if slots]
    if share:
        assert reading == [[1, 2, 3]], reading
    else:
        assert reading == [[1], [2], [3]], reading
        steps = RecordingEngine.steps
        for slot in (1, 2, 3):  # each alone, its token handed out, then the step's decode rows
            i = next(i for i, step in enumerate(steps) if step.get(slot, 0) > 1)
            assert list(steps[i]) == [slot] and steps[i + 1].get(0) == 1, steps
            assert i + 1 in flushed_after, (i, flushed_after)


def test_slots_stay_packed_and_batches_list_them_in_slot_order(small_batches: LlamaCppBackend) -> None:
    """llama.cpp runs one weight pass per run of consecutive slot ids (see the
    scheduler's docstring): a new job fills the gap a finished one left."""
    backend = small_batches

    def request(name: str, text: str, max_tokens: int) -> GenerationRequest:
        return GenerationRequest(name, backend.tokenize(text), SamplingParams(max_tokens=max_tokens, ignore_eos=True))

    async def run() -> None:
        tasks = []
        for name, text, max_tokens in (("b", "Blue", 40), ("a", "Apple", 3), ("c", "Cherry", 40)):
            tasks.append(asyncio.create_task(_collect(backend.generate(request(name, text, max_tokens)))))
            while backend.stats().running < len(tasks):  # admitted in this order: slots 0, 1, 2
                await asyncio.sleep(0.001)
        await tasks[1]  # "a" is done: slot 1 is free, and so is slot 3
        await asyncio.gather(_collect(backend.generate(request("e", "Elder", 5))), tasks[0], tasks[2])

    asyncio.run(run())
    steps = RecordingEngine.steps
    assert all(list(step) == sorted(step) for step in steps)  # rows in slot order
    three_running = [set(step) for step in steps if len(step) == 3]
    assert three_running and all(s == {0, 1, 2} for s in three_running), three_running  # "e" took slot 1, not 3


def test_a_shared_prefix_is_reused_and_changes_nothing(small_batches: LlamaCppBackend) -> None:
    backend = small_batches
    system = backend.tokenize("You are a helpful assistant who answers in one sentence. " * 4)
    params = SamplingParams(max_tokens=12, temperature=0)

    async def run(prompt: list[int]) -> list[int]:
        chunks = await _collect(backend.generate(GenerationRequest("r", prompt, params)))
        return [t for c in chunks for t in c.token_ids]  # type: ignore[attr-defined]

    question = backend.tokenize(" Why is the sky blue?")
    asyncio.run(run(system + backend.tokenize(" What is two plus two?")))
    RecordingEngine.steps = []
    cached = asyncio.run(run(system + question))
    evaluated = sum(sum(s.values()) for s in RecordingEngine.steps)
    assert evaluated < len(system)  # the system prompt's KV came from the first request
    fresh = LlamaCppBackend(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=512, n_parallel=1, prefix_cache=False)

    async def uncached() -> list[int]:
        await fresh.start()
        try:
            chunks = await _collect(fresh.generate(GenerationRequest("r", system + question, params)))
            return [t for c in chunks for t in c.token_ids]  # type: ignore[attr-defined]
        finally:
            await fresh.stop()

    assert cached == asyncio.run(uncached())


@pytest.fixture(scope="module")
def two_slots() -> Iterator[RunningServer]:
    model = ModelConfig(
        name="tiny-queue",
        backend="llamacpp",
        variant="smollm2-135m-instruct-q4_1",
        options={"n_ctx": 256, "n_parallel": 2},
        max_queue=2,
    )
    with serve(Settings(models=[model])) as server:
        yield server


def test_a_burst_beyond_slots_and_queue_gets_429s_and_nothing_hangs(two_slots: RunningServer) -> None:
    async def burst() -> list[int]:
        body = {"model": "tiny-queue", "prompt": "Hello", "max_tokens": 32, "ignore_eos": True, "stream": True}
        async with httpx.AsyncClient(base_url=two_slots.v1, timeout=60) as c:

            async def one() -> int:
                async with c.stream("POST", "/completions", json=body) as r:
                    events = [line async for line in r.aiter_lines() if line.startswith("data:")]
                    if r.status_code == 200:
                        assert events[-1] == "data: [DONE]" and len(events) == 32 + 1  # complete streams
                    return r.status_code

            return list(await asyncio.gather(*(one() for _ in range(10))))

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 4 and statuses.count(429) >= 1  # 2 running + 2 queued at least
    d = two_slots.router.get("tiny-queue")
    assert wait_until(lambda: d.admission.running == 0 and d.backend.stats().running == 0)


def test_a_logits_processor_masks_its_own_rows_only(gateway: RunningServer) -> None:
    """The seam sits inside the batched step: a masked sequence decodes beside free ones
    and their output is what it is alone."""
    backend = gateway.router.get(SMOL).engine
    allowed = digit_tokens(backend)

    def request(name: str, prompt: str, *processors: AllowOnly) -> GenerationRequest:
        params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logits_processors=processors)
        return GenerationRequest(name, backend.tokenize(prompt), params)

    def ids(chunks: list[Chunk]) -> list[int]:
        return [t for c in chunks for t in c.token_ids]

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        free = [request(f"free-{i}", p) for i, p in enumerate(PROMPTS[:3])]
        masked = [request(f"masked-{i}", p, AllowOnly(allowed)) for i, p in enumerate(PROMPTS[3:6])]
        solo = [ids(await collect(backend.generate(r))) for r in free]
        together = await asyncio.gather(*(collect(backend.generate(r)) for r in [*free, *masked]))
        return solo, [ids(c) for c in together]

    solo, together = asyncio.run(run())
    assert together[:3] == solo
    for tokens in together[3:]:
        assert len(tokens) == 16 and set(tokens) <= allowed
