"""Perplexity by llama.cpp's protocol (tools/perplexity): the text tokenized whole
(with the model's BOS), cut into chunks of n_ctx tokens, each chunk's first token
set to BOS when the model uses one, and only the second half of each chunk scored
(every position from n_ctx/2 predicts the next token), so each scored token has at
least n_ctx/2 tokens of context. Computed from the engine's logits, or from any
OpenAI-compatible server's echoed prompt logprobs, the same way."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from backends.llamacpp.engine import EngineConfig, LlamaEngine
from backends.logprobs import log_softmax


@dataclass(slots=True)
class Perplexity:
    protocol: str
    n_ctx: int
    chunks: int
    tokens_scored: int
    nll: float  # summed negative log-likelihood, nats

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens_scored)


def chunks(tokens: list[int], n_ctx: int, bos: int | None, max_chunks: int | None) -> Iterator[list[int]]:
    """llama.cpp's chunks: whole n_ctx slices (a tail shorter than n_ctx is dropped)."""
    count = len(tokens) // n_ctx
    if max_chunks is not None:
        count = min(count, max_chunks)
    for i in range(count):
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx]
        if bos is not None:
            chunk[0] = bos
        yield chunk


def with_engine(
    path: str,
    text: str,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    threads: int = 0,
    step: Callable[[int, int], None] | None = None,
) -> Perplexity:
    """From the engine's own logits, one chunk per decode. step(done, total) reports progress."""
    n_threads = threads or len(os.sched_getaffinity(0))
    engine = LlamaEngine(EngineConfig(path, n_ctx, n_ctx, 1, n_threads, n_threads, 0, True, None, False))
    try:
        tokens = engine.tokenize(text, add_special=True)
        bos = engine.bos_id if engine.add_bos else None
        first = n_ctx // 2
        todo = list(chunks(tokens, n_ctx, bos, max_chunks))
        nll, scored = 0.0, 0
        for done, chunk in enumerate(todo, 1):
            engine.free_sequence(0)
            engine.decode(chunk, list(range(n_ctx)), [0] * n_ctx, [pos >= first for pos in range(n_ctx)])
            for j in range(first, n_ctx - 1):
                nll -= float(log_softmax(engine.logits(j))[chunk[j + 1]])
                scored += 1
            if step is not None:
                step(done, len(todo))
        return Perplexity("llamacpp", n_ctx, len(todo), scored, nll)
    finally:
        engine.close()


def with_server(
    base_url: str,
    model: str,
    text: str,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    step: Callable[[int, int], None] | None = None,
) -> Perplexity:
    """Through `/tokenize` and `/v1/completions` with echo and logprobs (max_tokens 0):
    a variant on any engine, or someone else's server, scored the same way. The
    server must tokenize (Lightgate and vLLM do) and echo prompt logprobs."""
    with httpx.Client(base_url=base_url, timeout=600) as client:
        tokens = _post(client, "/tokenize", {"model": model, "prompt": text})["tokens"]
        bare = _post(client, "/tokenize", {"model": model, "prompt": ""})["tokens"]
        bos = bare[0] if bare else None  # a model that adds BOS adds it to the empty text too
        first = n_ctx // 2
        todo = list(chunks(tokens, n_ctx, bos, max_chunks))
        nll, scored = 0.0, 0
        for done, chunk in enumerate(todo, 1):
            body = {"model": model, "prompt": chunk, "max_tokens": 0, "echo": True, "logprobs": 0}
            logprobs = _post(client, "/v1/completions", body)["choices"][0]["logprobs"]["token_logprobs"]
            # token_logprobs[k] is the logprob of prompt token k given those before it.
            part = np.asarray(logprobs[first + 1 : n_ctx], dtype=np.float64)
            nll -= float(part.sum())
            scored += len(part)
            if step is not None:
                step(done, len(todo))
        return Perplexity("llamacpp", n_ctx, len(todo), scored, nll)


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    response = client.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
    return response.json()
