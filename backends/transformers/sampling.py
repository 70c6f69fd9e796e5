"""SamplingParams over a row of PyTorch logits, in the order every Lightgate backend
uses (backends/llamacpp/sampler.py): bias and penalties on the raw logits, then
temperature, then top-k / top-p / min-p on the tempered distribution, then a draw
from a generator seeded per request. Plain functions on one row: the PyTorch
baseline decodes one sequence at a time."""

from __future__ import annotations

from collections import Counter
from typing import Any

from backends.base import SamplingParams


def process(logits: Any, params: SamplingParams, generated: list[int], banned: list[int]) -> Any:
    """Bias, penalties and banned ids (EOS while it may not come yet) applied to a
    copy of `logits` (1-D, float32)."""
    import torch

    x = logits.clone()
    for token, bias in params.logit_bias.items():
        if 0 <= token < x.shape[0]:
            x[token] += bias
    if generated and (params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty):
        counts = Counter(generated)
        ids = torch.tensor(list(counts), dtype=torch.long)
        n = torch.tensor(list(counts.values()), dtype=x.dtype)
        seen = x[ids]
        if params.repetition_penalty != 1.0:  # CTRL's penalty, as llama.cpp applies it
            seen = torch.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
        x[ids] = seen - n * params.frequency_penalty - params.presence_penalty
    if banned:
        x[banned] = float("-inf")
    return x


def pick(x: Any, params: SamplingParams, generator: Any) -> int:
    """The next token from processed logits `x`."""
    import torch

    if params.greedy:
        return int(torch.argmax(x))
    x = x / params.temperature
    if 0 < params.top_k < x.shape[0]:
        kth = torch.topk(x, params.top_k).values[-1]
        x = torch.where(x < kth, float("-inf"), x)
    probs = torch.softmax(x, dim=-1)
    if params.top_p < 1.0:
        # The smallest set of most likely tokens whose mass reaches top_p (at least one).
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        drop = order[before >= params.top_p]
        probs[drop] = 0.0
    if params.min_p > 0.0:
        probs = torch.where(probs < params.min_p * probs.max(), 0.0, probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
