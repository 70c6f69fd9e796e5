"""Perplexity by the two protocols the survey's sources use, computed from the
engine's logits or from any OpenAI-compatible server's echoed prompt logprobs,
the same way.

- `llamacpp` (llama.cpp's tools/perplexity): the text tokenized whole (with the
  model's BOS), cut into chunks of n_ctx tokens (512 by default), each chunk's
  first token set to BOS when the model uses one, and only the second half of each
  chunk scored, so each scored token has at least n_ctx/2 tokens of context.
- `gptq` (GPTQ's datautils, which AWQ and most quantization papers reuse): the test
  split's rows joined with "\n\n" and tokenized once, cut into windows of 2048
  tokens (a shorter tail is dropped), every token after a window's first scored
  given the window before it, no BOS per window.

The same text scores lower under `llamacpp`: its tokens all have half a chunk of
context, while `gptq`'s early window positions have little."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from backends.logprobs import log_softmax

ProtocolName = Literal["llamacpp", "gptq"]
DEFAULT_CTX: dict[str, int] = {"llamacpp": 512, "gptq": 2048}


@dataclass(slots=True, frozen=True)
class Protocol:
    name: ProtocolName
    n_ctx: int

    @classmethod
    def of(cls, name: ProtocolName, n_ctx: int | None = None) -> Protocol:
        return cls(name, n_ctx or DEFAULT_CTX[name])

    @property
    def first_scored(self) -> int:
        """The first position whose prediction of the next token is scored."""
        return self.n_ctx // 2 if self.name == "llamacpp" else 0

    def text(self, raw: str) -> str:
        """The text to tokenize, from a WikiText raw file. GPTQ reads the Hugging Face
        dataset, whose rows are the raw file's lines with blank ones empty."""
        if self.name == "llamacpp":
            return raw
        return "\n\n".join("" if not line.strip() else line for line in raw.splitlines(keepends=True))

    def chunks(self, tokens: list[int], bos: int | None, max_chunks: int | None) -> Iterator[list[int]]:
        """Whole n_ctx slices (a shorter tail is dropped); llama.cpp's start with BOS."""
        count = len(tokens) // self.n_ctx
        if max_chunks is not None:
            count = min(count, max_chunks)
        for i in range(count):
            chunk = tokens[i * self.n_ctx : (i + 1) * self.n_ctx]
            if bos is not None and self.name == "llamacpp":
                chunk[0] = bos
            yield chunk


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


def score(
    protocol: Protocol,
    tokens: list[int],
    bos: int | None,
    max_chunks: int | None,
    scored_logprobs: Callable[[list[int]], Any],
    step: Callable[[int, int], None] | None = None,
) -> Perplexity:
    """The protocol's loop, whatever computes the logprobs: `scored_logprobs(chunk)`
    gives the log-probabilities of chunk[first_scored + 1:], each given the tokens
    before it. step(done, total) reports progress."""
    todo = list(protocol.chunks(tokens, bos, max_chunks))
    nll, scored = 0.0, 0
    for done, chunk in enumerate(todo, 1):
        logprobs = np.asarray(scored_logprobs(chunk), dtype=np.float64)
        nll -= float(logprobs.sum())
        scored += len(logprobs)
        if step is not None:
            step(done, len(todo))
    if not scored:
        raise ValueError(f"the text is shorter than one chunk of {protocol.n_ctx} tokens")
    return Perplexity(protocol.name, protocol.n_ctx, len(todo), scored, nll)


def with_engine(
    path: str,
    raw: str,
    protocol: Protocol,
    max_chunks: int | None = None,
    threads: int = 0,
    step: Callable[[int, int], None] | None = None,
    cache_types: tuple[str, str] = ("f16", "f16"),
    flash_attn: bool | None = None,
) -> Perplexity:
    """From the engine's own logits, one chunk per decode; `cache_types`: the KV cells'
    types for K and V (llama-perplexity's -ctk/-ctv): a chunk's attention reads them;
    `flash_attn` llama-perplexity's -fa (None: llama.cpp's choice, on for a CPU)."""
    n_threads = threads or len(os.sched_getaffinity(0))
    n_ctx, first = protocol.n_ctx, protocol.first_scored
    from backends.llamacpp.engine import CACHE_TYPES, EngineConfig, LlamaEngine  # only for GGUF scoring

    type_k, type_v = (CACHE_TYPES[name] for name in cache_types)
    config = EngineConfig(
        path, n_ctx, n_ctx, 1, n_threads, n_threads, 0, True, flash_attn, False, type_k=type_k, type_v=type_v
    )
    engine = LlamaEngine(config)

    def scored_logprobs(chunk: list[int]) -> list[float]:
        engine.free_sequence(0)
        engine.decode(chunk, list(range(n_ctx)), [0] * n_ctx, [pos >= first for pos in range(n_ctx)])
        return [float(log_softmax(engine.logits(j))[chunk[j + 1]]) for j in range(first, n_ctx - 1)]

    try:
        tokens = engine.tokenize(protocol.text(raw), add_special=True)
        bos = engine.bos_id if engine.add_bos else None
        return score(protocol, tokens, bos, max_chunks, scored_logprobs, step)
    finally:
        engine.close()


def with_server(
    base_url: str,
    model: str,
    raw: str,
    protocol: Protocol,
    max_chunks: int | None = None,
    step: Callable[[int, int], None] | None = None,
) -> Perplexity:
    """Through `/tokenize` and `/v1/completions` with echo and logprobs (max_tokens 0):
    a variant on any engine, or someone else's server, scored the same way. The
    server must tokenize (Lightgate and vLLM do) and echo prompt logprobs."""
    with httpx.Client(base_url=base_url, timeout=600) as client:

        def scored_logprobs(chunk: list[int]) -> list[float]:
            body = {"model": model, "prompt": chunk, "max_tokens": 0, "echo": True, "logprobs": 0}
            logprobs = _post(client, "/v1/completions", body)["choices"][0]["logprobs"]["token_logprobs"]
            # token_logprobs[k] is the logprob of prompt token k given those before it.
            return list(logprobs[protocol.first_scored + 1 : protocol.n_ctx])

        tokens = _post(client, "/tokenize", {"model": model, "prompt": protocol.text(raw)})["tokens"]
        bare = _post(client, "/tokenize", {"model": model, "prompt": ""})["tokens"]
        bos = bare[0] if bare else None  # a model that adds BOS adds it to the empty text too
        return score(protocol, tokens, bos, max_chunks, scored_logprobs, step)


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    response = client.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
    return response.json()
