"""Echoed prompt logprobs checked against an independent computation: llama-cpp-python's
high-level `Llama` with `logits_all=True`, whose score row i is the distribution after
token i, so token i+1's logprob is log_softmax(scores[i])[token i+1]. (Its own
`create_completion(echo=True, logprobs=k)` scores the wrong position; see
ENVIRONMENT.md.) The reference enables flash attention as llama.cpp's default does
on a CPU: with it off, logprobs move by up to ~0.5 nats on this model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import openai
import pytest

from backends.base import GenerationRequest, SamplingParams
from backends.llamacpp.backend import LlamaCppBackend
from backends.logprobs import log_softmax
from compressed_models.catalog import resolve
from tests.conftest import SMOL
from tests.server import RunningServer

WIKI = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def sample_text() -> str:
    if WIKI.is_file():
        return WIKI.read_text(encoding="utf-8")[2000:2600]
    return (
        "Robert Boulter is an English film , television and theatre actor . He had a guest starring role on "
        "the television series The Bill in 2000 . This was followed by a starring role in the play Herons "
        "written by Simon Stephens , which was performed in 2001 at the Royal Court Theatre . He had a guest "
        "role in the television series Judge John Deed in 2002 . In 2004 Boulter landed a role as Craig in "
        "the episode Teddy 's Story of the television series The Long Firm ."
    )


def independent_logprobs(tokens: list[int]) -> list[float]:
    from llama_cpp import Llama

    llm = Llama(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=1024, logits_all=True, flash_attn=True, verbose=False)
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: len(tokens)])
    return [float(log_softmax(scores[i])[tokens[i + 1]]) for i in range(len(tokens) - 1)]


def test_echo_logprobs_match_an_independent_computation(gateway: RunningServer, client: openai.OpenAI) -> None:
    text = sample_text()
    tokens = gateway.router.get(SMOL).engine.tokenize(text)
    r = client.completions.create(model=SMOL, prompt=tokens, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None
    ours = lp.token_logprobs
    assert ours[0] is None and len(ours) == len(tokens)
    reference = independent_logprobs(tokens)
    diff = np.abs(np.array(ours[1:], dtype=np.float64) - np.array(reference))
    assert diff.max() < 1e-3, f"max difference {diff.max():.4f}"
    # The position fix matters: scoring with the wrong row is far off.
    shifted = np.abs(np.array(ours[2:], dtype=np.float64) - np.array(reference[:-1]))
    assert shifted.mean() > 0.5
    # And the sum is a sane perplexity for a 135M model on Wikipedia text.
    perplexity = float(np.exp(-np.mean(reference)))
    assert 5 < perplexity < 200


@pytest.mark.parametrize("n_batch", [7, 512])
def test_prompt_logprobs_do_not_depend_on_the_prefill_chunking(n_batch: int) -> None:
    """Chunked prefill (n_batch smaller than the prompt) must score every position."""

    async def run() -> list[float | None]:
        backend = LlamaCppBackend(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=256, n_batch=n_batch, n_parallel=2)
        await backend.start()
        try:
            tokens = backend.tokenize(sample_text())[:40]
            req = GenerationRequest("t", tokens, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
            chunks = [c async for c in backend.generate(req)]
            assert chunks[0].prompt_logprobs is not None
            return [e.logprob for e in chunks[0].prompt_logprobs]
        finally:
            await backend.stop()

    ours = asyncio.run(run())
    assert ours[0] is None and len(ours) == 40
    reference = independent_logprobs(_first_tokens(40))
    assert np.abs(np.array(ours[1:], dtype=np.float64) - np.array(reference)).max() < 2e-2


def _first_tokens(n: int) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=64, vocab_only=True, verbose=False)
    return list(llm.tokenize(sample_text().encode()))[:n]
