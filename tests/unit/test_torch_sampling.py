"""The PyTorch baseline's sampling on fixed logits: each processor does what the
other backends' chains do, in the same order."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from backends.base import SamplingParams  # noqa: E402
from backends.transformers.sampling import pick, process  # noqa: E402


def logits_of(probs: list[float]) -> Any:
    return torch.tensor([math.log(p) for p in probs])


def drawn(probs: list[float], params: SamplingParams, draws: int = 400) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    x = process(logits_of(probs), params, [], [])
    return {pick(x, params, generator) for _ in range(draws)}


def test_greedy_takes_the_most_likely_token() -> None:
    assert pick(logits_of([0.2, 0.5, 0.3]), SamplingParams(temperature=0), torch.Generator()) == 1


def test_filters_keep_what_they_say() -> None:
    probs = [0.5, 0.3, 0.15, 0.05]
    assert drawn(probs, SamplingParams()) == {0, 1, 2, 3}
    assert drawn(probs, SamplingParams(top_k=2)) == {0, 1}
    assert drawn(probs, SamplingParams(top_p=0.5)) == {0}  # 0.5 alone reaches 0.5
    assert drawn(probs, SamplingParams(top_p=0.6)) == {0, 1}
    assert drawn(probs, SamplingParams(min_p=0.5)) == {0, 1}  # 0.3 >= 0.25 > 0.15


def test_same_seed_same_draws() -> None:
    x = logits_of([0.25] * 4)
    a = [pick(x, SamplingParams(), torch.Generator().manual_seed(9)) for _ in range(5)]
    b = [pick(x, SamplingParams(), torch.Generator().manual_seed(9)) for _ in range(5)]
    assert a == b


def test_bias_penalties_and_bans_act_on_raw_logits() -> None:
    raw = torch.tensor([2.0, -2.0, 1.0, 0.0])
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25, logit_bias={3: 5.0})
    out = process(raw, params, generated=[0, 0, 1], banned=[2])
    # token 0: 2/2 - 2*0.5 - 0.25; token 1: -2*2 - 0.5 - 0.25; token 2 banned; token 3 biased.
    assert out.tolist() == [pytest.approx(-0.25), pytest.approx(-4.75), -math.inf, 5.0]
    assert raw.tolist() == [2.0, -2.0, 1.0, 0.0]  # the engine's row is left alone
