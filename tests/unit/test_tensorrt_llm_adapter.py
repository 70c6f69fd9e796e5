"""The `tensorrt_llm` backend's adapter code, against a stand-in for TensorRT-LLM's
`LLM` API: the real package cannot be installed here (the index holds a
placeholder) and needs a GPU, so `FakeTensorRTLLM` plays its documented streaming
API and records what it was asked. The real engine runs in scripts/gpu_check.sh."""

from __future__ import annotations

import asyncio
import importlib.machinery
import sys
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backends.base import Chunk, GenerationRequest, SamplingParams, UnsupportedFeature


@dataclass
class Logprob:  # TensorRT-LLM's own shape: a logprob and a rank
    logprob: float
    rank: int | None = None


@dataclass
class Output:
    token_ids_diff: list[int]
    text_diff: str
    logprobs_diff: list[Any]
    prompt_logprobs: list[Any] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    outputs: list[Output]
    finished: bool


@dataclass
class FakeTensorRTLLM:
    """Streams two outputs per request; like the engine, every output carries the
    prompt's logprobs when they were asked for."""

    sampling: list[dict[str, Any]] = field(default_factory=list)
    aborted: int = 0

    def generate_async(self, prompt: list[int], sampling_params: Any, streaming: bool) -> Any:
        assert streaming
        asked = sampling_params.kwargs
        self.sampling.append(asked)
        rows = [{t: Logprob(-0.5, 1)} for t in prompt[1:]] if asked["prompt_logprobs"] is not None else None
        table = {5: Logprob(-0.1, 1), 6: Logprob(-2.0, 2), 7: Logprob(-3.0, 3)}
        fake = self

        class Result:
            async def __aiter__(self) -> AsyncIterator[RequestOutput]:
                yield RequestOutput([Output([5], "a", [table], rows)], finished=False)
                yield RequestOutput([Output([6], "b", [table], rows, "length")], finished=True)

            def abort(self) -> None:
                fake.aborted += 1

        return Result()


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    module = types.ModuleType("tensorrt_llm")
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt_llm", None)
    module.SamplingParams = lambda **kwargs: types.SimpleNamespace(kwargs=kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt_llm", module)
    from backends.tensorrt_llm.backend import TensorRTLLMBackend

    backend = TensorRTLLMBackend(str(tmp_path))
    backend._llm = FakeTensorRTLLM()
    backend._tokenizer = types.SimpleNamespace(bytes=[bytes([97 + i]) for i in range(16)])  # type: ignore[assignment]
    yield backend


def run(backend: Any, **params: Any) -> list[Chunk]:
    async def collect() -> list[Chunk]:
        req = GenerationRequest("r", [1, 2, 3], SamplingParams(**params))
        return [c async for c in backend.generate(req)]

    return asyncio.run(collect())


def test_prompt_logprobs_ride_on_the_first_chunk_only(engine: Any) -> None:
    chunks = run(engine, max_tokens=2, logprobs=2, prompt_logprobs=1)
    first, second = chunks
    assert first.prompt_logprobs is not None and [e.token_id for e in first.prompt_logprobs] == [1, 2, 3]
    assert first.prompt_logprobs[0].logprob is None  # nothing predicts the first token
    assert second.prompt_logprobs is None
    assert [(t.token_id, t.logprob) for t in first.logprobs[0].top] == [(5, -0.1), (6, -2.0)]  # type: ignore[index]
    assert second.finish_reason == "length" and engine._llm.aborted == 0


def test_echo_only_is_one_chunk_and_the_engine_is_told_to_stop(engine: Any) -> None:
    [chunk] = run(engine, max_tokens=0, prompt_logprobs=0)
    assert chunk.token_ids == [] and chunk.finish_reason == "length" and chunk.prompt_logprobs is not None
    assert engine._llm.aborted == 1


def test_greedy_reaches_the_engine_written_the_one_way(engine: Any) -> None:
    run(engine, temperature=0, top_k=40, top_p=0.5, min_p=0.2)
    asked = engine._llm.sampling[-1]
    assert (asked["temperature"], asked["top_k"], asked["top_p"], asked["min_p"]) == (0.0, 1, 1.0, None)


def test_what_tensorrt_llm_cannot_do_is_refused(engine: Any) -> None:
    with pytest.raises(UnsupportedFeature, match="logit bias"):
        run(engine, logit_bias={3: 1.0})
    with pytest.raises(UnsupportedFeature, match="logits processors"):
        run(engine, logits_processors=(lambda generated, logits: None,))
