"""The reference sampling order (backends/sampling.py) on hand-checkable logits, and
llama.cpp's sampler chain drawing from the reference's distribution on the same
logits: the two implementations the backends sample with must agree."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from backends.base import SamplingParams
from backends.llamacpp.sampler import SamplerChain, _pick, sampler_steps
from backends.sampling import adjust, constrain, distribution, draw, filters, warp

# The chi-square statistic's critical values at p = 0.001, by degrees of freedom.
CHI2_CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def logits_of(probs: list[float]) -> npt.NDArray[np.float32]:
    return np.log(np.array(probs, dtype=np.float32))


def test_filters_keep_what_they_say() -> None:
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    assert warp(logits, SamplingParams(temperature=0)).tolist() == [1, 0, 0, 0]
    kept = {
        "all": SamplingParams(),
        "top_k": SamplingParams(top_k=2),
        "top_p alone": SamplingParams(top_p=0.5),  # 0.5 alone reaches 0.5
        "top_p two": SamplingParams(top_p=0.6),
        "min_p": SamplingParams(min_p=0.5),  # 0.3 >= 0.25 > 0.15
    }
    support = {name: set(np.flatnonzero(warp(logits, p)).tolist()) for name, p in kept.items()}
    assert support == {
        "all": {0, 1, 2, 3},
        "top_k": {0, 1},
        "top_p alone": {0},
        "top_p two": {0, 1},
        "min_p": {0, 1},
    }
    assert warp(logits, SamplingParams()).sum() == pytest.approx(1.0)
    assert warp(logits, SamplingParams(temperature=0.5))[0] > 0.5  # a lower temperature sharpens


def test_processors_run_first_then_bias_and_penalties_on_raw_logits() -> None:
    raw = np.array([2.0, -2.0, 1.0, 0.0], dtype=np.float32)
    seen: list[tuple[list[int], list[float]]] = []

    def ban_token_2(generated: Sequence[int], logits: npt.NDArray[np.float32]) -> None:
        seen.append((list(generated), logits.tolist()))
        logits[2] = -np.inf

    params = SamplingParams(
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        logit_bias={3: 5.0},
        logits_processors=(ban_token_2,),
    )
    out = adjust(raw, params, [0, 0, 1], eos_ids=[])
    # token 0: 2/2 - 2*0.5 - 0.25; token 1: -2*2 - 0.5 - 0.25; token 2 banned; token 3 biased.
    assert out.tolist() == [pytest.approx(-0.25), pytest.approx(-4.75), -math.inf, 5.0]
    assert seen == [([0, 0, 1], [2.0, -2.0, 1.0, 0.0])]  # the processor saw raw logits and the history
    assert raw.tolist() == [2.0, -2.0, 1.0, 0.0]  # the engine's row is left alone


def test_eos_is_banned_until_min_tokens_and_under_ignore_eos() -> None:
    params = SamplingParams(min_tokens=2)
    for generated, banned in (([], True), ([5], True), ([5, 6], False)):
        row = np.zeros(4, dtype=np.float32)
        constrain(row, params, generated, eos_ids=[3])
        assert bool(row[3] == -np.inf) is banned
    row = np.zeros(4, dtype=np.float32)
    constrain(row, SamplingParams(ignore_eos=True), [1, 2, 3, 4], eos_ids=[3])
    assert row[3] == -np.inf


def test_same_seed_same_draws_and_greedy_spends_no_randomness() -> None:
    p = warp(logits_of([0.25] * 4), SamplingParams())
    a = [draw(p, np.random.default_rng(9)) for _ in range(5)]
    b = [draw(p, np.random.default_rng(9)) for _ in range(5)]
    assert a == b
    assert draw(warp(logits_of([0.2, 0.5, 0.3]), SamplingParams(temperature=0)), np.random.default_rng()) == 1


def test_greedy_is_written_one_way_for_engines_with_their_own_samplers() -> None:
    greedy = filters(SamplingParams(temperature=0, top_k=40, top_p=0.5, min_p=0.1))
    assert (greedy.temperature, greedy.top_k, greedy.top_p, greedy.min_p) == (0.0, 1, 1.0, 0.0)
    f = filters(SamplingParams(temperature=0.7, top_k=40, top_p=0.5, min_p=0.1))
    assert (f.temperature, f.top_k, f.top_p, f.min_p) == (0.7, 40, 0.5, 0.1)


LOGITS = np.array([3.1, 2.7, 2.2, 1.9, 1.0, 0.4, -0.5, -1.2], dtype=np.float32)
HISTORY = [1, 1, 4]
EOS = [7]
CASES = {
    "tempered": SamplingParams(temperature=1.3),
    "every filter, bias and penalties": SamplingParams(
        temperature=0.7,
        top_k=6,
        top_p=0.9,
        min_p=0.05,
        logit_bias={5: 2.0, 0: -1.0},
        repetition_penalty=1.3,
        frequency_penalty=0.2,
        presence_penalty=0.1,
    ),
    "min_tokens bans EOS, min_p": SamplingParams(temperature=0.9, min_p=0.02, min_tokens=10),
    "greedy after bias": SamplingParams(temperature=0, logit_bias={2: 1.5}),
    "top-k and top-p, no bias": SamplingParams(temperature=0.8, top_k=6, top_p=0.9),
    # Without bias, penalties or top-k the chain is numpy's (`Filtered`).
    "top-p alone": SamplingParams(temperature=1.1, top_p=0.75),
    "min_tokens bans EOS, top-p": SamplingParams(temperature=0.9, top_p=0.8, min_tokens=10),
}


@pytest.mark.parametrize("case", list(CASES))
def test_llamacpp_chain_draws_from_the_reference_distribution(case: str) -> None:
    params = CASES[case]
    expected = distribution(LOGITS, params, HISTORY, EOS)
    draws = 6000
    counts = np.zeros(len(LOGITS))
    for i in range(draws):
        # As the scheduler does it: the seam on the row, then a chain that has seen the history.
        p = dataclasses.replace(params, seed=i)
        chain = SamplerChain(sampler_steps(p, penalty_window=64), len(LOGITS))
        for token in HISTORY:
            chain.accept(token)
        row = LOGITS.copy()
        constrain(row, p, HISTORY, EOS)
        counts[chain.draw(row)] += 1
        chain.close()
    support = expected > 0
    assert not counts[~support].any(), (case, counts, expected)  # nothing the reference filters out
    if support.sum() == 1:
        return  # greedy: the one token, every time
    want = draws * expected[support]
    chi2 = float((((counts[support] - want) ** 2) / want).sum())
    assert chi2 < CHI2_CRITICAL[int(support.sum()) - 1], (case, counts, want, chi2)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_p=0.95),
        SamplingParams(temperature=0.7, top_p=0.9, min_p=0.001),
        SamplingParams(temperature=2.0),
    ],
    ids=["top-p", "top-p-min-p", "temperature"],
)
def test_the_numpy_chain_keeps_the_reference_distribution_on_a_large_vocabulary(params: SamplingParams) -> None:
    """On a 152k-token row as flat as a small model's at a high temperature (the
    nucleus holds thousands of tokens), the tokens `Filtered` may draw and their
    weights are the reference's `warp`."""
    row = (np.random.default_rng(3).standard_normal(151_936) * 1.5).astype(np.float32)
    chain = SamplerChain(sampler_steps(params, penalty_window=64), row.shape[0])
    assert chain.filtered is not None
    ids, weights = chain.filtered.probs(row)
    expected = warp(row, params)
    got = np.zeros_like(expected)
    got[ids] = weights / weights.sum(dtype=np.float64)
    assert set(ids.tolist()) == set(np.flatnonzero(expected).tolist())
    assert len(ids) > 1_000
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-12)
    chain.close()


def test_a_draw_never_gives_a_token_of_weight_zero() -> None:
    """Banned tokens (weight 0) sit at block edges and between the only positive ones;
    draws land on positive weights only, in proportion to them."""
    weights = np.zeros(5000, dtype=np.float32)
    weights[[0, 1023, 1024, 4999]] = [1.0, 2.0, 1e-30, 1.0]
    rng = np.random.default_rng(0)
    counts = np.bincount([_pick(weights, rng) for _ in range(4000)], minlength=5000)
    assert set(np.flatnonzero(counts)) <= {0, 1023, 1024, 4999}
    assert abs(counts[1023] / 4000 - 0.5) < 0.04 and abs(counts[0] / 4000 - 0.25) < 0.04


@pytest.mark.parametrize("top_p", [1.0, 0.9], ids=["temperature", "top-p"])
def test_sequences_drawing_in_turn_on_one_thread_draw_what_each_would_alone(top_p: float) -> None:
    """The numpy draw writes into scratch rows kept per thread: two sequences drawing in
    turn (as the scheduler draws a step's rows) get the tokens each gets alone with its
    seed, and neither's logits row is written to."""
    gen = np.random.default_rng(5)
    rows = [(gen.standard_normal(151_936) * 2).astype(np.float32) for _ in range(2)]
    before = [row.copy() for row in rows]

    def chains() -> list[SamplerChain]:
        params = [SamplingParams(temperature=0.9, top_p=top_p, seed=seed) for seed in (11, 12)]
        return [SamplerChain(sampler_steps(p, penalty_window=64), 151_936) for p in params]

    alone = [[chain.draw(row) for _ in range(40)] for chain, row in zip(chains(), rows, strict=True)]
    in_turn: list[list[int]] = [[], []]
    turns = chains()
    for _ in range(40):
        for i in (0, 1):
            in_turn[i].append(turns[i].draw(rows[i]))
    assert in_turn == alone
    assert len(set(alone[0])) > 1 and alone[0] != alone[1]  # real draws, not one token over and over
    for row, copy in zip(rows, before, strict=True):
        np.testing.assert_array_equal(row, copy)
