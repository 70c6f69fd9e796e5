"""Logprob entries, built one way for every backend: from raw logits (the engines
that sample themselves, and ExLlamaV2's returned logits) or from the ranked tables
that vLLM and TensorRT-LLM return. A logprob is the token's under the model's raw
distribution; a prompt's first token has none (nothing predicts it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from backends.base import TokenLogprob, TopLogprob

Logits = npt.NDArray[np.float32]
Piece = Callable[[int], bytes]  # a token id's bytes (the backend's token_bytes)


def log_softmax(logits: Logits) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64)
    x -= x.max()
    out: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum())
    return out


def top_k(logprobs: npt.NDArray[np.float64], k: int) -> list[tuple[int, float]]:
    """The k most likely token ids, most likely first."""
    if k <= 0:
        return []
    k = min(k, logprobs.shape[0])
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in idx]


def entry(logits: Logits, token: int, k: int, piece: Piece) -> TokenLogprob:
    """`token` with its logprob under a row of raw logits, and the k most likely tokens."""
    lp = log_softmax(logits)
    top = tuple(TopLogprob(i, piece(i), v) for i, v in top_k(lp, k))
    return TokenLogprob(token, piece(token), float(lp[token]), top)


def first_prompt_entry(prompt: Sequence[int], piece: Piece) -> TokenLogprob:
    """The prompt's first token: no logprob, no alternatives."""
    return TokenLogprob(prompt[0], piece(prompt[0]), None)


def ranked_entry(token: int, ranked: Mapping[int, Any] | float | None, k: int, piece: Piece) -> TokenLogprob:
    """From an engine's table {token id: Logprob(logprob, rank)} (vLLM, TensorRT-LLM):
    it holds the k most likely and the chosen token, whatever its rank. A bare float
    is the chosen token's logprob alone (TensorRT-LLM without alternatives)."""
    if isinstance(ranked, float):
        return TokenLogprob(token, piece(token), ranked)
    ranked = ranked or {}
    logprob = float(ranked[token].logprob) if token in ranked else None
    best = sorted(
        ((i, float(lp.logprob)) for i, lp in ranked.items() if lp.rank is None or lp.rank <= k),
        key=lambda item: -item[1],
    )[:k]
    return TokenLogprob(token, piece(token), logprob, tuple(TopLogprob(i, piece(i), v) for i, v in best))


def ranked_prompt_entries(
    prompt: Sequence[int], rows: Sequence[Mapping[int, Any] | float | None] | None, k: int | None, piece: Piece
) -> list[TokenLogprob] | None:
    """A prompt's entries from an engine's ranked tables (None when none were asked for).
    Engines send either one table per prompt token, the first None (vLLM's API), or
    one per token after the first."""
    if not rows or k is None:
        return None
    if len(rows) == len(prompt):
        rows = rows[1:]
    tail = [ranked_entry(t, row, k, piece) for t, row in zip(prompt[1:], rows, strict=True)]
    return [first_prompt_entry(prompt, piece), *tail]
