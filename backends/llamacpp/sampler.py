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
import threading
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


_FILTERS = {"temp", "top_p", "min_p", "dist"}


@dataclass(slots=True)
class Filtered:
    """The filters and draw of a chain without bias, penalties or top-k (the usual
    request: a temperature, perhaps top-p / min-p), in numpy. llama.cpp's chain turns
    the whole row into a candidate list, and its top-p sorts all of it: on Qwen's
    152k vocabulary a draw cost 1.4 ms at temperature 1 and 11 ms with top_p 0.95
    (benchmarks/sampler_cost.py), once per sequence per step on the scheduler's thread,
    while ggml's threads wait (16 sequences: 20-180 ms a step). Here top-p sorts only
    the tokens at the nucleus's edge (`_nucleus`)."""

    temperature: float
    top_p: float
    min_p: float
    rng: np.random.Generator

    def probs(self, logits: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        """The tokens a draw may give and their weights (not normalized): the
        reference's `warp` (backends/sampling.py), computed on candidates only. The
        weights may be this thread's scratch row, valid until its next draw."""
        x, p = _scratch(logits.shape[0])
        np.divide(logits, np.float32(self.temperature), out=x)
        x -= x.max()  # the most likely token weighs 1
        ids = _token_ids(x.shape[0])
        np.exp(x, out=p)
        if self.top_p < 1.0:
            keep = _nucleus(x, p, self.top_p)
            ids, p = ids[keep], p[keep]
        if self.min_p > 0.0:
            kept = p >= self.min_p * p.max()
            ids, p = ids[kept], p[kept]
        return ids, p

    def draw(self, logits: npt.NDArray[np.float32]) -> int:
        ids, p = self.probs(logits)
        return int(ids[0]) if ids.shape[0] == 1 else int(ids[_pick(p, self.rng)])


# Rows a draw writes, kept per thread (draws run on the scheduler's thread). Fresh
# row-sized arrays every draw were fresh pages every draw: at 16 streams on Qwen's
# vocabulary, 600k page faults in 30 s, most of a draw's time on this VM (~14 us a
# fault); the same pages again, none.
_local = threading.local()
_ids: dict[int, npt.NDArray[np.intp]] = {}


def _scratch(n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    rows: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = getattr(_local, "rows", None)
    if rows is None or rows[0].shape[0] != n:
        rows = _local.rows = (np.empty(n, np.float32), np.empty(n, np.float32))
    return rows


def _token_ids(n: int) -> npt.NDArray[np.intp]:
    """0..n-1, read-only, made once per vocabulary size."""
    if n not in _ids:
        ids = np.arange(n)
        ids.flags.writeable = False
        _ids[n] = ids
    return _ids[n]


_BLOCK = 1024


def _pick(weights: npt.NDArray[np.float32], rng: np.random.Generator) -> int:
    """An index drawn in proportion to `weights` (one at least positive): a running sum
    of block sums, then one inside the block the draw falls in, not over the whole row
    (a 152k-token row: ~0.2 ms against ~0.5 ms). The block sums are summed in float64
    by a reduction over a view, which casts a buffer at a time (`np.add.reduceat` with
    a float64 dtype cast the whole row into a new array first)."""
    n = weights.shape[0]
    whole = n - n % _BLOCK
    sums = weights[:whole].reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64)
    if whole < n:
        sums = np.append(sums, weights[whole:].sum(dtype=np.float64))
    blocks = np.cumsum(sums)
    starts = range(0, n, _BLOCK)
    u = rng.random() * blocks[-1]
    b = int(np.searchsorted(blocks, u, side="right"))  # a block with mass: blocks[b - 1] <= u < blocks[b]
    inner = np.cumsum(weights[starts[b] : starts[b] + _BLOCK], dtype=np.float64)
    # The block's running sum may round a hair below its sum: stay under it, so the
    # token drawn is one whose weight raised the sum past the draw (never a zero).
    v = min(u - (blocks[b - 1] if b else 0.0), float(np.nextafter(inner[-1], 0.0)))
    return int(starts[b] + np.searchsorted(inner, v, side="right"))


_BINS_PER_NAT = 64
_BINS = 64 * 40  # weights below e^-40 of the most likely token's fall in the last bin


def _nucleus(
    log_weights: npt.NDArray[np.float32], weights: npt.NDArray[np.float32], top_p: float
) -> npt.NDArray[np.intp]:
    """The smallest set of most likely tokens whose mass reaches `top_p` of the total,
    without sorting the row: tokens are binned by log weight (1/64 of a nat a bin),
    the bins summed from the top until they hold the mass, and only the tokens of the
    bin where it is reached are sorted. A row as flat as a small model's at a high
    temperature puts thousands of tokens in the nucleus; this costs the same for any."""
    bins = np.minimum(-log_weights * _BINS_PER_NAT, _BINS - 1).astype(np.intp)  # a banned token (-inf): the last
    by_bin = np.cumsum(np.bincount(bins, weights=weights, minlength=_BINS))
    need = top_p * by_bin[-1]
    edge = int(np.searchsorted(by_bin, need))  # the first bin whose running mass reaches it
    before = by_bin[edge - 1] if edge > 0 else 0.0
    border = np.flatnonzero(bins == edge)
    border = border[np.argsort(-weights[border], kind="stable")]
    mass = before + np.cumsum(weights[border], dtype=np.float64)
    return np.concatenate([np.flatnonzero(bins < edge), border[mass - weights[border] < need]])


class SamplerChain:
    """Owns a llama.cpp sampler chain; `sample` draws and accepts one token."""

    def __init__(self, steps: list[Step], n_vocab: int, *, native: bool = False) -> None:
        # Plain greedy needs no state and no candidate list: argmax over the logits
        # row is the same token (numpy and llama.cpp's greedy both take the first
        # maximum) at a sixth of the cost, paid once per sequence per step.
        # `native`: llama.cpp's chain whatever the steps (what the shortcuts are measured against).
        self.plain_greedy = not native and [s.kind for s in steps] == ["greedy"]
        self.filtered = None if native else _filtered(steps)
        self._ptr = None
        if self.filtered is not None:
            return
        self._ptr = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for step in steps:
            llama_cpp.llama_sampler_chain_add(self._ptr, _make(step, n_vocab))

    def sample(self, ctx: Any, index: int, logits: npt.NDArray[np.float32]) -> int:
        """The next token from row `index` of the last batch; `logits` is that row."""
        if self.plain_greedy:
            return int(np.argmax(logits))
        if self.filtered is not None:
            return self.filtered.draw(logits)
        return int(llama_cpp.llama_sampler_sample(self._ptr, ctx, index))

    def draw(self, logits: npt.NDArray[np.float32]) -> int:
        """What `sample` does with a context's row, on a row held anywhere: the chain
        applied to every token's logit, then the drawn token accepted (penalties count it)."""
        if self.plain_greedy:
            return int(np.argmax(logits))
        if self.filtered is not None:
            return self.filtered.draw(logits)
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
        if self._ptr is not None:
            llama_cpp.llama_sampler_accept(self._ptr, token)

    def close(self) -> None:
        if self._ptr is not None:
            llama_cpp.llama_sampler_free(self._ptr)
            self._ptr = None


def _filtered(steps: list[Step]) -> Filtered | None:
    """The numpy draw for a chain of filters and a draw only (see `Filtered`)."""
    kinds = {s.kind: s.args for s in steps}
    # With top-k llama.cpp's chain is the quicker (a bucket sort leaves k candidates
    # for the rest: 0.21 against 0.27 ms a draw at k = 40 on Qwen's vocabulary).
    if not kinds.keys() <= _FILTERS or "dist" not in kinds:
        return None
    return Filtered(
        temperature=cast(float, kinds["temp"][0]) if "temp" in kinds else 1.0,
        top_p=cast(float, kinds["top_p"][0]) if "top_p" in kinds else 1.0,
        min_p=cast(float, kinds["min_p"][0]) if "min_p" in kinds else 0.0,
        rng=np.random.default_rng(cast(int, kinds["dist"][0])),
    )


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
