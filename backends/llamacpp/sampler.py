"""SamplingParams as a llama.cpp sampler chain, in the order of the reference
(backends/sampling.py), not llama.cpp's CLI default: bias and penalties on raw
logits, then temperature, then the top-k / top-p / min-p filters on the tempered
distribution, then a seeded draw. Applying temperature before top-p is what makes
`top_p` mean the same thing here as on every other backend. The scheduler has run
the reference's `constrain` on the row before the chain reads it; a test checks
that the chain draws from the reference's distribution."""

from __future__ import annotations

import ctypes
import secrets
from dataclasses import dataclass
from typing import Any, cast

import llama_cpp
import numpy as np
import numpy.typing as npt

from backends.base import SamplingParams

_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: "pick one at random"


@dataclass(slots=True, frozen=True)
class Step:
    kind: str
    args: tuple[object, ...] = ()


def sampler_steps(params: SamplingParams, penalty_window: int) -> list[Step]:
    """The chain for `params`, as plain data (so it can be checked without an engine)."""
    steps: list[Step] = []
    if params.logit_bias:
        steps.append(Step("logit_bias", (dict(sorted(params.logit_bias.items())),)))
    if params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        steps.append(
            Step(
                "penalties",
                (penalty_window, params.repetition_penalty, params.frequency_penalty, params.presence_penalty),
            )
        )
    if params.greedy:
        steps.append(Step("greedy"))
        return steps
    steps.append(Step("temp", (params.temperature,)))
    if params.top_k > 0:
        steps.append(Step("top_k", (params.top_k,)))
    if params.top_p < 1.0:
        steps.append(Step("top_p", (params.top_p,)))
    if params.min_p > 0.0:
        steps.append(Step("min_p", (params.min_p,)))
    steps.append(Step("dist", (engine_seed(params.seed),)))
    return steps


def engine_seed(seed: int | None) -> int:
    """A 32-bit seed llama.cpp will not read as "random"; a fresh one when none is given."""
    if seed is None:
        return secrets.randbelow(_RANDOM_SEED)
    return seed % _RANDOM_SEED


class SamplerChain:
    """Owns a llama.cpp sampler chain; `sample` draws and accepts one token."""

    def __init__(self, steps: list[Step], n_vocab: int) -> None:
        # Plain greedy needs no state and no candidate list: argmax over the logits
        # row is the same token (numpy and llama.cpp's greedy both take the first
        # maximum) at a sixth of the cost, paid once per sequence per step.
        self.plain_greedy = [s.kind for s in steps] == ["greedy"]
        self._ptr = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for step in steps:
            llama_cpp.llama_sampler_chain_add(self._ptr, _make(step, n_vocab))

    def sample(self, ctx: Any, index: int, logits: npt.NDArray[np.float32]) -> int:
        """The next token from row `index` of the last batch; `logits` is that row."""
        if self.plain_greedy:
            return int(np.argmax(logits))
        return int(llama_cpp.llama_sampler_sample(self._ptr, ctx, index))

    def draw(self, logits: npt.NDArray[np.float32]) -> int:
        """What `sample` does with a context's row, on a row held anywhere: the chain
        applied to every token's logit, then the drawn token accepted (penalties count it)."""
        n = logits.shape[0]
        data = (llama_cpp.llama_token_data * n)()
        for i in range(n):
            data[i].id, data[i].logit, data[i].p = i, float(logits[i]), 0.0
        candidates = llama_cpp.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self._ptr, ctypes.byref(candidates))
        token = int(candidates.data[candidates.selected].id)
        self.accept(token)
        return token

    def accept(self, token: int) -> None:
        """Tell the chain a token was generated (the penalties' history)."""
        llama_cpp.llama_sampler_accept(self._ptr, token)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self._ptr)


def _make(step: Step, n_vocab: int) -> Any:
    """One llama.cpp sampler (a ctypes pointer the chain takes ownership of)."""
    a = step.args
    match step.kind:
        case "logit_bias":
            bias = cast(dict[int, float], a[0])
            arr = (llama_cpp.llama_logit_bias * len(bias))()
            for i, (token, value) in enumerate(bias.items()):
                arr[i].token = llama_cpp.llama_token(token)
                arr[i].bias = value
            return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), arr)
        case "penalties":
            window, repeat, freq, present = cast(tuple[int, float, float, float], a)
            return llama_cpp.llama_sampler_init_penalties(n_vocab, window, repeat, freq, present)
        case "greedy":
            return llama_cpp.llama_sampler_init_greedy()
        case "temp":
            return llama_cpp.llama_sampler_init_temp(cast(float, a[0]))
        case "top_k":
            return llama_cpp.llama_sampler_init_top_k(cast(int, a[0]))
        case "top_p":
            return llama_cpp.llama_sampler_init_top_p(cast(float, a[0]), 1)
        case "min_p":
            return llama_cpp.llama_sampler_init_min_p(cast(float, a[0]), 1)
        case "dist":
            return llama_cpp.llama_sampler_init_dist(cast(int, a[0]))
    raise ValueError(f"unknown sampler step {step.kind!r}")
