"""The real llama.cpp engine, recording what each decode step held: for tests of what
the scheduler puts in a batch (chunked prefill, slot order, a prefix computed once)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.engine import LlamaEngine
from compressed_models.catalog import resolve


class RecordingEngine(LlamaEngine):
    """Each step as {slot: tokens it evaluated}. While `gate` is set to an unset event,
    the next step waits for it (`held` says when one does), so that requests sent
    meanwhile reach the scheduler together."""

    steps: list[dict[int, int]]
    gate: threading.Event | None = None
    held = threading.Event()

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], want_logits: list[bool]) -> None:
        gate = RecordingEngine.gate
        if gate is not None:
            RecordingEngine.held.set()
            gate.wait()
        per_slot: dict[int, int] = {}
        for slot in seq_ids:
            per_slot[slot] = per_slot.get(slot, 0) + 1
        self.steps.append(per_slot)
        super().decode(tokens, positions, seq_ids, want_logits)


def prefilled(steps: list[dict[int, int]]) -> int:
    """Prompt tokens evaluated in chunks (a row of one is a decode, or a prompt's last token)."""
    return sum(n for step in steps for n in step.values() if n > 1)


def recording_backend(monkeypatch: pytest.MonkeyPatch, **options: object) -> Iterator[LlamaCppBackend]:
    """SmolLM2 on the llamacpp backend with a recording engine, started, then stopped."""
    monkeypatch.setattr("backends.llamacpp.backend.LlamaEngine", RecordingEngine)
    RecordingEngine.steps = []
    RecordingEngine.gate = None
    RecordingEngine.held.clear()
    backend = LlamaCppBackend(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=512, **options)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.stop())


async def collect_chunks(stream: AsyncIterator[object]) -> list[object]:
    return [c async for c in stream]
