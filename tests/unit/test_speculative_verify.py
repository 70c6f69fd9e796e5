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


def test_a_match_measures_how_far_back_it_goes_and_a_loop_is_drafted_round() -> None:
    from backends.lookup import MATCH_CAP, Lookup

    index = Lookup([5, 1, 2, 3, 4, 9, 9, 1, 2, 3, 4])
    at, length = index.match()
    assert (at, length) == (5, 4)  # "1 2 3 4" before the 9s; the 5 before it differs from the 9
    assert index.draft(at, 3) == [9, 9, 1]
    assert Lookup([1, 2, 3]).match() == (0, 0)  # nothing has occurred before
    loop = Lookup([7, 8, 9] * 4)
    at, length = loop.match()
    assert loop.tokens[at - length : at] == loop.tokens[-length:] and length == 9  # back to the first 7
    assert loop.draft(at, 7) == [7, 8, 9, 7, 8, 9, 7]  # past the text's end, round the loop
    long = Lookup(list(range(100)) * 2)
    assert long.match()[1] == MATCH_CAP


def test_the_history_finds_an_earlier_request_and_forgets_the_oldest() -> None:
    from backends.lookup import MATCH_CAP, History

    history = History(capacity=100, n=4)
    answer = list(range(1000, 1040))
    history.add([1, 2, 3, 4, 5, *answer])  # a prompt's end, then its answer
    text, at, length = history.match([9, 9, 2, 3, 4, 5])  # the same prompt's end, asked again
    assert (at, length) == (5, 4)  # before the 4-gram: a 1 in the text, a 9 in the tail
    assert history.draft(text, at, 3) == answer[:3] and history.available(text, at) == 40
    _, _, longer = history.match([1, 2, 3, 4, 5, *answer[:30]])
    assert longer == MATCH_CAP  # 35 tokens match: capped
    assert history.match([7, 7, 7, 7, 7]) == (-1, 0, 0)
    history.add(list(range(2000, 2070)))  # past 100 tokens: the first text goes
    assert history.match([2, 3, 4, 5]) == (-1, 0, 0)
    assert history.size == 70 and history.available(text, at) == 0
    for k in range(10):  # texts come and go, and their index entries with them
        history.add(list(range(3000 + 100 * k, 3060 + 100 * k)))
        assert len(history.follower) == sum(len(t) - history.n for t in history.texts.values())
    assert history.match(list(range(3900, 3910)))[1:] == (10, 10)  # the latest text, matched back to its start
    history.add([*range(3900, 3904), 1, 2])  # a later text takes over an n-gram of a kept one...
    history.add([7, 8, 9, 10] * 15)  # ...whose eviction (and this loop's, later) leaves the later one's entry
    assert history.match([3900, 3901, 3902, 3903])[1:] == (4, 4)
    history.add(list(range(6000, 6060)))  # the loop goes: its n-grams, each held many times, go once
    assert history.match([7, 8, 9, 10]) == (-1, 0, 0)
    assert len(history.follower) == sum(len(t) - history.n for t in history.texts.values())


def test_the_acceptance_record_is_kept_by_match_length() -> None:
    from backends.lookup import Acceptance

    record = Acceptance()
    assert record.rate(20, 0.9, 2.0) == pytest.approx(0.9)  # no evidence: the prior
    for _ in range(50):
        record.record(20, kept=3, tested=4)  # kept 3, the 4th differed: 3 of 4 tested kept
    assert record.rate(20, 0.9, 2.0) == pytest.approx(0.75, abs=0.01)
    assert record.rate(17, 0.9, 2.0) == record.rate(20, 0.9, 2.0)  # 16-31: one bucket
    assert record.rate(5, 0.9, 2.0) == pytest.approx(0.9)  # another bucket, its own record
    assert record.rate(20, 0.9, 2.0, source=1) == pytest.approx(0.9)  # drafts from the history: their own


def test_step_cost_is_the_measured_table_between_and_past_its_sizes() -> None:
    from backends.lookup import StepCost

    cost = StepCost(weight=0.5)
    assert cost.cost(4) == 4.0  # nothing measured: a row a unit
    cost.record(1, 0.010)
    assert cost.cost(8) == pytest.approx(0.080)  # one size: in proportion
    cost.record(8, 0.030)
    assert cost.cost(4) == pytest.approx(0.010 + 0.020 * 3 / 7)  # between two sizes: the line
    assert cost.cost(16) == pytest.approx(0.030 + 0.020 * 8 / 7)  # past them: the same line
    cost.record(2, 0.040)  # a size dearer than bigger ones (ggml changes kernels)
    assert cost.cost(3) >= cost.cost(2) == pytest.approx(0.040)  # more rows never cost less
    cost.record(1, 0.020)
    assert cost.cost(1) == pytest.approx(0.015)  # an average with decay


def _table(times_ms: dict[int, float]) -> object:
    from backends.lookup import StepCost

    cost = StepCost()
    for rows, ms in times_ms.items():
        cost.record(rows, ms / 1000)
    return cost


# Decode steps measured on 2 cores by rows (benchmarks/batched_speculation.py's machine).
QWEN_Q4_K_M = {1: 17.3, 2: 40.2, 4: 55.0, 8: 75.1, 16: 96.5, 32: 183.2, 48: 261.4, 64: 308.4}
FLAT = {n: 10.0 + n / 64 for n in (1, 2, 4, 8, 16, 32, 65)}  # rows nearly free: a GPU


def test_drafts_are_planned_where_they_raise_the_steps_tokens_per_second() -> None:
    from backends.lookup import StepCost, plan_drafts

    qwen, flat = _table(QWEN_Q4_K_M), _table(FLAT)
    assert isinstance(qwen, StepCost) and isinstance(flat, StepCost)
    # A sure copy drafts long where a short draft costs more than it saves (2 rows: 40 ms).
    (long,) = plan_drafts([(0.99, 64)], qwen)
    assert long >= 15
    assert plan_drafts([(0.99, 1)], qwen) == [0]  # capped at one token: a 2-row step does not pay
    assert long + 1 in QWEN_Q4_K_M  # to a step size that was timed
    assert plan_drafts([(0.7, 64)], qwen) == [0]  # an unsure one does not draft at all
    # Where rows are nearly free (a GPU) an unsure match drafts too, until a token's
    # chance of being kept (0.7**k) is worth less than its row; a sure one drafts all it may.
    (unsure_on_gpu,) = plan_drafts([(0.7, 64)], flat)
    assert 7 <= unsure_on_gpu <= 31
    assert plan_drafts([(0.999, 64)], flat) == [64]
    # Two sequences: the surer is planned first; the other then adds rows to a step
    # already long, where a row is cheap, and may draft a token or two, not more.
    unsure, sure = plan_drafts([(0.5, 64), (0.99, 64)], qwen)
    assert sure >= 14 and unsure <= 2
    assert plan_drafts([(0.3, 64), (0.3, 64)], qwen) == [0, 0]


def test_a_stream_per_slot_splits_a_step_where_its_slots_bring_different_rows() -> None:
    """llama.cpp's `split_equal(sequential=true)`: micro-batches of consecutive slot ids,
    the same rows from each; one unified stream takes any rows in one pass."""
    from backends.lookup import passes

    assert passes([1, 1, 1, 1], [0, 1, 2, 3]) == [4]
    assert passes([9, 1, 1, 1], [0, 1, 2, 3]) == [4, 8]  # one drafter: a pass of its own
    assert passes([9, 9, 1, 1], [0, 1, 2, 3]) == [4, 16]  # two drafters side by side share it
    assert passes([9, 1, 9, 1], [0, 1, 2, 3]) == [4, 8, 8]  # apart, they do not
    assert passes([9, 9, 9, 9], [0, 1, 2, 3]) == [36]
    assert passes([1, 1], [0, 2]) == [1, 1]  # a gap in the ids splits too
    assert passes([1, 3], [5, 4]) == [2, 2]  # ids are taken in order, whatever the list's
    assert passes([9, 1, 1, 1], None) == [12]


def test_with_a_stream_per_slot_drafts_are_planned_to_keep_the_step_in_one_pass() -> None:
    """Four sure copies: one unified stream lets each draft what pays; with a stream
    each, a plan of unequal drafts pays a pass per length, so all draft the same."""
    from backends.lookup import StepCost, plan_drafts

    qwen = _table(QWEN_Q4_K_M)
    assert isinstance(qwen, StepCost)
    sure = [(0.99, 64)] * 4
    plan = plan_drafts(sure, qwen, [0, 1, 2, 3])
    assert len(set(plan)) == 1 and plan[0] > 0 and 4 * (plan[0] + 1) in QWEN_Q4_K_M
    # A likely copy (0.8) among three with nothing to draft: drafting splits the step (4
    # rows, then the drafter's own pass), which at these prices does not pay; in one
    # stream it adds rows to the 4-row pass, which does.
    alone = [(0.8, 64), (0.0, 0), (0.0, 0), (0.0, 0)]
    assert plan_drafts(alone, qwen, [0, 1, 2, 3]) == [0, 0, 0, 0]
    (drafted, *rest) = plan_drafts(alone, qwen, None)
    assert drafted > 0 and rest == [0, 0, 0]


def test_a_draft_comes_from_the_source_whose_record_is_surer() -> None:
    """Own text or history: the surer by its record at its match's length, the longer
    where records agree, its own text where even the lengths do; none when neither
    matches."""
    from backends.lookup import pick_source

    def laplace(length: int, source: int) -> float:
        return (length + 1) / (length + 2)

    own, found = (10, 5), (3, 40, 12)  # own: at 10, 5 long; history: text 3, at 40, 12 long
    assert pick_source(own, found, laplace)[:3] == (3, 40, 12)  # no record yet: the longer
    assert pick_source((10, 12), found, laplace)[:3] == (-1, 10, 12)  # as long: its own
    history_kept = {0: 0.6, 1: 0.99}
    assert pick_source((10, 32), found, lambda n, src: history_kept[src])[:3] == (3, 40, 12)  # surer though shorter
    own_kept = {0: 0.99, 1: 0.6}
    assert pick_source(own, found, lambda n, src: own_kept[src]) == (-1, 10, 5, 0.99)
    assert pick_source((0, 0), found, laplace)[:3] == (3, 40, 12)
    assert pick_source(own, (-1, 0, 0), laplace) == (-1, 10, 5, 6 / 7)
    assert pick_source((0, 0), (-1, 0, 0), laplace) == (-1, 0, 0, 0.0)


def test_a_copy_is_followed_through_a_renamed_token() -> None:
    """A code edit that writes 99 for every 7 of the text it copies: the first change
    breaks the copy; once the token after it equals the text's again, the change is
    learnt, the copy goes on, and drafts write 99 where the text has 7."""
    from backends.lookup import Lookup

    source = [1, 2, 7, 3, 4, 5, 7, 6, 8, 9, 10, 7, 11, 12]
    index = Lookup([*source, 0, 1, 2, 7, 3], substitutions=True)
    assert index.match() == (4, 4)  # "1 2 7 3": a copy under way, its place followed
    index.extend([4, 5, 99, 6])  # the copy, a change, the copy again
    assert index.subs == {7: 99}
    at, length = index.match()
    assert (at, length) == (8, 8)  # "1 2 7 3 4 5 99 6" is "1 2 7 3 4 5 7 6", with the change
    assert index.draft(at, 5) == [8, 9, 10, 99, 11]
    plain = Lookup(index.tokens)
    assert plain.match()[1] == 0  # without substitutions the copy was lost at 99
    index.extend([8, 9, 10, 7])  # the text's own token after all: the change is forgotten
    assert index.subs == {}
    assert index.draft(index.match()[0], 4) == [11, 12, 0, 1]


def test_substitutions_leave_a_text_without_changes_as_plain_lookup_drafts_it() -> None:
    from backends.lookup import Lookup

    rng = np.random.default_rng(1)
    for _ in range(100):
        text = [int(t) for t in rng.integers(0, 50, size=60)]
        copied = text + text[:30]  # a faithful copy: nothing to learn
        a, b = Lookup(copied[:61]), Lookup(copied[:61], substitutions=True)
        for end in range(62, len(copied) + 1):
            a.extend(copied[end - 1 : end])
            b.extend(copied[end - 1 : end])
            assert b.subs == {}
            at_a, length_a = a.match()
            at_b, _ = b.match()
            if length_a >= 4:
                assert a.draft(at_a, 5) == b.draft(at_b, 5)
