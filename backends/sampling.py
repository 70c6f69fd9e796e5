"""The sampling order of every Lightgate backend, written once as the reference, and
the seam where a sequence's logits are constrained inside an engine's batched step.

The order, as OpenAI-style servers (vLLM, transformers) have it:
  1. `constrain`: EOS banned while it may not come yet (ignore_eos, min_tokens), then
     the request's logits processors (a grammar's mask), on the raw logits;
  2. logit bias, then repetition / frequency / presence penalties over the tokens
     generated so far;
  3. temperature, then top-k, top-p and min-p on the tempered distribution;
  4. a draw from what is left (greedy: the first maximum).

The PyTorch baseline and the speculative loop sample with these functions
(`distribution` and `draw`). llama.cpp samples with its own sampler chain, built in
the same order (backends/llamacpp/sampler.py), after `constrain` has run on its
logits row; tests/unit/test_sampling_order.py checks that both draw from the same
distribution. Engines with samplers of their own (vLLM, ExLlamaV2, TensorRT-LLM)
take `filters(params)`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from backends.base import SamplingParams

Logits = npt.NDArray[np.float32]
Probs = npt.NDArray[np.float64]


def bans_eos(params: SamplingParams, n_generated: int) -> bool:
    """Whether end-of-sequence may not be sampled now."""
    return params.ignore_eos or n_generated < params.min_tokens


def constrain(logits: Logits, params: SamplingParams, generated: Sequence[int], eos_ids: Sequence[int]) -> None:
    """The per-sequence seam, in place on a row of raw logits, before any sampler sees
    it: EOS banned while it may not come, then each logits processor of the request."""
    if bans_eos(params, len(generated)):
        logits[list(eos_ids)] = -np.inf
    for processor in params.logits_processors:
        processor(generated, logits)


def adjust(logits: Logits, params: SamplingParams, generated: Sequence[int], eos_ids: Sequence[int]) -> Logits:
    """Steps 1 and 2 on a copy: constrained, biased and penalized logits."""
    x = logits.copy()
    constrain(x, params, generated, eos_ids)
    for token, bias in params.logit_bias.items():
        x[token] += bias
    if generated and (params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty):
        ids, counts = np.unique(np.asarray(generated), return_counts=True)
        seen = x[ids]
        if params.repetition_penalty != 1.0:  # CTRL's penalty, as llama.cpp applies it
            seen = np.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
        x[ids] = seen - counts * params.frequency_penalty - params.presence_penalty
    return x


def warp(logits: Logits, params: SamplingParams) -> Probs:
    """Step 3: the distribution a draw is made from. Greedy is one-hot on the first maximum."""
    x = logits.astype(np.float64)
    if params.greedy:
        out = np.zeros_like(x)
        out[int(np.argmax(x))] = 1.0
        return out
    x = x / params.temperature
    if 0 < params.top_k < x.shape[0]:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x = np.where(x < kth, -np.inf, x)
    x -= x.max()
    p = np.exp(x)
    p /= p.sum()
    if params.top_p < 1.0:
        # The smallest set of most likely tokens whose mass reaches top_p (at least one).
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        p[order[before >= params.top_p]] = 0.0
    if params.min_p > 0.0:
        p = np.where(p < params.min_p * p.max(), 0.0, p)
    total: float = p.sum()
    return p / total


def distribution(logits: Logits, params: SamplingParams, generated: Sequence[int], eos_ids: Sequence[int]) -> Probs:
    """Steps 1 to 3: what the next token is drawn from."""
    return warp(adjust(logits, params, generated, eos_ids), params)


def draw(probs: Probs, rng: np.random.Generator) -> int:
    """Step 4. A one-hot distribution (greedy) spends no randomness."""
    nonzero = np.flatnonzero(probs)
    if len(nonzero) == 1:
        return int(nonzero[0])
    return int(rng.choice(probs.shape[0], p=probs))


@dataclass(slots=True, frozen=True)
class Filters:
    """Step 3's settings as an engine with its own sampler takes them."""

    temperature: float
    top_k: int  # 0: off
    top_p: float
    min_p: float


def filters(params: SamplingParams) -> Filters:
    """Greedy is written once, in the two ways engines read it at once: temperature 0
    (vLLM's and TensorRT-LLM's greedy path) and top_k 1 (argmax in any sampler);
    ExLlamaV2, whose sampler divides by the temperature, reads only the second."""
    if params.greedy:
        return Filters(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0)
    return Filters(params.temperature, params.top_k, params.top_p, params.min_p)
