"""Log-softmax and top-k on numbers small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np

from backends.base import TokenLogprob, TopLogprob
from backends.logprobs import log_softmax, top_k
from gateway.outputs import chat_logprobs, completion_logprobs, token_str


def test_log_softmax_of_equal_logits_is_uniform() -> None:
    lp = log_softmax(np.array([3.0, 3.0, 3.0, 3.0], dtype=np.float32))
    assert np.allclose(lp, math.log(0.25))


def test_log_softmax_by_hand() -> None:
    lp = log_softmax(np.array([0.0, math.log(3.0)], dtype=np.float32))  # probabilities 1/4, 3/4
    assert np.allclose(np.exp(lp), [0.25, 0.75], atol=1e-6)


def test_top_k_orders_most_likely_first() -> None:
    lp = np.log(np.array([0.1, 0.5, 0.15, 0.25]))
    assert [i for i, _ in top_k(lp, 3)] == [1, 3, 2]
    assert top_k(lp, 0) == []
    assert len(top_k(lp, 10)) == 4


def entry(token: bytes, logprob: float | None, top: list[tuple[bytes, float]]) -> TokenLogprob:
    return TokenLogprob(0, token, logprob, tuple(TopLogprob(0, t, v) for t, v in top))


def test_completion_table_offsets_and_chosen_token() -> None:
    entries = [
        entry(b"The", None, []),
        entry(b" cat", -2.0, [(b" dog", -1.0)]),
        entry(b" sat", -0.5, [(b" sat", -0.5)]),
    ]
    table = completion_logprobs(entries, text_offset=10)
    assert table.tokens == ["The", " cat", " sat"]
    assert table.token_logprobs == [None, -2.0, -0.5]
    assert table.top_logprobs == [None, {" dog": -1.0, " cat": -2.0}, {" sat": -0.5}]
    assert table.text_offset == [10, 13, 17]


def test_split_characters_are_written_as_bytes() -> None:
    assert token_str("é".encode()) == "é"
    assert token_str(b"\xc3") == "bytes:\\xc3"


def test_chat_logprobs_carry_bytes() -> None:
    [item] = chat_logprobs([entry(b"\xc3", -1.0, [(b"a", -0.1)])]).content
    assert item.bytes == [0xC3] and item.token == "bytes:\\xc3"
    assert item.top_logprobs[0].token == "a"
