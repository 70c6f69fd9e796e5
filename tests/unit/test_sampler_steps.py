"""SamplingParams to llama.cpp sampler chains: order and seeds, without an engine."""

from __future__ import annotations

from backends.base import SamplingParams
from backends.llamacpp.sampler import Step, engine_seed, sampler_steps


def kinds(params: SamplingParams) -> list[str]:
    return [s.kind for s in sampler_steps(params, penalty_window=64)]


def test_greedy_is_one_step() -> None:
    assert kinds(SamplingParams(temperature=0)) == ["greedy"]


def test_defaults_sample_from_the_tempered_distribution() -> None:
    assert kinds(SamplingParams(seed=1)) == ["temp", "dist"]


def test_full_chain_order_tempers_before_filtering() -> None:
    params = SamplingParams(
        temperature=0.7,
        top_k=40,
        top_p=0.9,
        min_p=0.05,
        presence_penalty=0.5,
        logit_bias={5: 1.0, 2: -100.0},
        seed=3,
    )
    steps = sampler_steps(params, penalty_window=64)
    assert [s.kind for s in steps] == ["logit_bias", "penalties", "temp", "top_k", "top_p", "min_p", "dist"]
    assert steps[0] == Step("logit_bias", ({2: -100.0, 5: 1.0},))
    assert steps[1] == Step("penalties", (64, 1.0, 0.0, 0.5))
    assert steps[-1] == Step("dist", (3,))


def test_penalties_apply_to_greedy_too() -> None:
    assert kinds(SamplingParams(temperature=0, frequency_penalty=1.0)) == ["penalties", "greedy"]


def test_seeds_avoid_llamas_random_marker() -> None:
    assert engine_seed(7) == 7
    assert engine_seed(0xFFFFFFFF) == 0
    assert engine_seed(2**40 + 5) == (2**40 + 5) % 0xFFFFFFFF
    assert 0 <= engine_seed(None) < 0xFFFFFFFF
