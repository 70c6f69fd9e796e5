"""Speculative sampling's maths on fixed toy distributions: the accept-all,
reject-all and partial cases give exactly the expected tokens, and over many
draws the emitted token is distributed as the target's p, whatever the draft's q."""

from __future__ import annotations

import numpy as np
import pytest

from backends.speculative.verify import verify


def probs(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def test_greedy_keeps_the_drafts_that_are_the_targets_argmax() -> None:
    rng = np.random.default_rng(0)
    onehot = [probs(*(1.0 if i == t else 0.0 for i in range(4))) for t in (2, 1, 3, 0)]
    # all three agree: all kept, then the bonus is the target's 4th argmax
    v = verify([2, 1, 3], onehot[:3], onehot, rng)
    assert (v.accepted, v.token) == (3, 0)
    # the second disagrees: one kept, the correction is the target's argmax there
    q = [onehot[0], probs(1, 0, 0, 0), onehot[2]]
    v = verify([2, 0, 3], q, onehot, rng)
    assert (v.accepted, v.token) == (1, 1)
    # the first disagrees: nothing kept
    v = verify([3, 1, 3], [probs(0, 0, 0, 1), onehot[1], onehot[2]], onehot, rng)
    assert (v.accepted, v.token) == (0, 2)


def test_a_token_the_target_rules_out_is_always_rejected() -> None:
    rng = np.random.default_rng(1)
    p = [probs(0.0, 0.5, 0.5), probs(0.2, 0.3, 0.5)]
    q = [probs(1.0, 0.0, 0.0)]
    for _ in range(200):
        v = verify([0], q, p, rng)
        assert v.accepted == 0 and v.token in (1, 2)  # residual max(0, p - q) has no mass on 0


def test_a_draft_equal_to_the_target_is_always_accepted() -> None:
    rng = np.random.default_rng(2)
    p = [probs(0.1, 0.6, 0.3)] * 3
    for _ in range(200):
        assert verify([1, 2], p[:2], p, rng).accepted == 2


@pytest.mark.parametrize("q", [[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.05, 0.05, 0.1, 0.8]])
def test_emitted_tokens_follow_the_target_whatever_the_draft(q: list[float]) -> None:
    """Chi-square over 20,000 steps of γ=1: the first emitted token (the kept draft or
    the correction) is distributed as p. Critical value 16.27: df 3, p = 0.001."""
    rng = np.random.default_rng(3)
    p = probs(0.1, 0.2, 0.3, 0.4)
    qv = probs(*q)
    n = 20_000
    counts = np.zeros(4)
    for _ in range(n):
        x = int(rng.choice(4, p=qv))
        v = verify([x], [qv], [p, p], rng)
        counts[x if v.accepted else v.token] += 1
    chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
    assert chi2 < 16.27, (counts, chi2)


def test_prompt_lookup_drafts_what_followed_the_last_match() -> None:
    from backends.lookup import lookup

    text = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert lookup(text, 2, 3) == [4, 5]  # "1 2 3" was followed by "4 5"
    assert lookup([7, 1, 8, 1], 3, 3) == [8, 1]  # only "1" matches: what followed it
    assert lookup([1, 2, 3], 4, 3) == []  # nothing repeats
    assert lookup([5, 6, 5, 6, 5], 4, 2) == [6, 5]  # the latest match wins


def test_the_lookup_index_proposes_what_the_scan_finds() -> None:
    """`Lookup` (the batcher's incremental index) against `lookup` (the scan), on
    random texts over small alphabets (many repeats), extended a token at a time."""
    from backends.lookup import Lookup, lookup

    rng = np.random.default_rng(0)
    proposals = 0
    for _ in range(200):
        text = [int(t) for t in rng.integers(0, int(rng.integers(2, 12)), size=int(rng.integers(1, 40)))]
        index = Lookup(text[:5], sizes=(3, 2, 1))
        for end in range(5, len(text) + 1):
            index.extend(text[len(index.tokens) : end])
            for gamma in (1, 4):
                expected = lookup(text[:end], gamma, 3)
                assert index.propose(gamma) == expected, (text[:end], gamma)
                proposals += bool(expected)
    assert proposals > 500  # the texts did repeat


def test_a_sequence_whose_drafts_miss_rests_longer_each_time_and_one_that_hits_drafts_more() -> None:
    from backends.lookup import DraftPolicy

    policy = DraftPolicy(draft_max=8)
    assert policy.allowance() == 4
    policy.update(4, 4)  # all kept: twice as many
    assert policy.allowance() == 8
    policy.update(8, 8)
    assert policy.allowance() == 8  # at most draft_max
    policy.update(3, 8)  # a partial miss: what was kept
    assert policy.allowance() == 3
    rests = []
    for _ in range(4):  # two misses in a row, four times over
        policy.update(0, policy.allowance())
        policy.update(0, policy.allowance())
        steps = 0
        while policy.allowance() == 0:
            steps += 1
        rests.append(steps)
    assert rests == [8, 16, 32, 64]
    policy.update(1, 4)  # a hit ends the backoff
    policy.update(0, 1)
    policy.update(0, 1)
    assert policy.cooldown == 8


def test_the_step_cost_fit_finds_a_rows_price_and_when_drafts_pay() -> None:
    from backends.lookup import DraftPolicy, StepCost

    cost = StepCost()
    for _ in range(20):
        cost.record(4, 0.05)  # steps all alike: nothing to fit a row's price from
    assert cost.fit() is None and cost.threshold(1) == 0.5  # a row as dear as the fixed part
    rng = np.random.default_rng(1)
    for _ in range(200):
        rows = int(rng.choice([1, 2, 4, 6, 9]))
        cost.record(rows, 0.009 + 0.011 * rows + float(rng.normal(0, 0.0005)))
    fit = cost.fit()
    assert fit is not None
    assert fit[0] == pytest.approx(0.009, abs=0.002) and fit[1] == pytest.approx(0.011, abs=0.001)
    # Alone a draft pays when ~55% of its tokens are kept; beside three others, ~84%.
    assert cost.threshold(1) == pytest.approx(0.011 / 0.020, abs=0.05)
    assert cost.threshold(4) == pytest.approx(0.011 / (0.009 / 4 + 0.011), abs=0.05)
    policy = DraftPolicy(draft_max=8)
    for _ in range(10):
        policy.update(3, 4)  # 75% kept
    assert policy.pays(cost.threshold(1)) and not policy.pays(cost.threshold(4))
