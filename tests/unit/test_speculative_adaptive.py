"""Adaptive γ (backends/speculative/adaptive.py) against the physics it decides on.

The cost model is checked on fixed measurements; the policy is run against a
simulated engine: step costs, a draft's catch-up and acceptance drawn from fixed
figures (this CPU's, measured for Qwen2.5-Coder 1.5B with the 0.5B draft, and a
GPU's memory-bound decode), many requests in a row, the way the backend calls
it. The simulation is a stand-in for the engines, named so: it has their costs,
not their tokens, so these tests check decisions and what they cost, not text."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from backends.speculative.adaptive import Costs, Policy


def costs(draft_s: float | None, passes: dict[int, float], accepted: int = 0, tested: int = 0) -> Costs:
    c = Costs(draft_s=draft_s, passes={n: [t] for n, t in passes.items()})
    c.accepted, c.tested = accepted, tested
    return c


def test_the_target_alone_when_the_physics_says_so() -> None:
    # This CPU: verification close to linear in tokens, the draft at 0.55 of the target;
    # at 70% acceptance (free text) no γ pays; at 97% (a code edit) long drafts gain a little.
    cpu = {1: 0.080, 2: 0.110, 3: 0.135, 5: 0.155}
    assert costs(0.045, cpu, accepted=70, tested=100).best(8) == (0, 1.0)
    gamma, gain = costs(0.045, cpu, accepted=97, tested=100).best(8)
    assert gamma >= 4 and 1.05 < gain < 1.15
    # A GPU: verification nearly free and a cheap draft: long drafts pay.
    gpu = costs(0.002, {1: 0.020, 5: 0.021}, accepted=80, tested=100)
    gamma, gain = gpu.best(8)
    assert gamma >= 4 and gain > 2
    # Prompt lookup drafts for free: at 80% acceptance, 5 tokens checked for 2.2x one pays.
    lookup = costs(0.0, {1: 0.097, 5: 0.215}, accepted=80, tested=100)
    gamma, gain = lookup.best(4)
    assert gamma >= 2 and 1.4 < gain < 1.6


def test_costs_never_fall_with_more_tokens_and_start_pessimistic() -> None:
    noisy = costs(0.04, {1: 0.077, 2: 0.115, 3: 0.140, 4: 0.124, 5: 0.165})
    assert noisy.cost(4) == noisy.cost(3) == pytest.approx(0.140)  # a noisy cheap 4 is not believed
    only_one = costs(0.04, {1: 0.080})
    assert only_one.cost(3) == pytest.approx(0.240)  # linear until a bigger pass is measured
    line = costs(0.04, {1: 0.080, 3: 0.140})
    assert line.cost(2) == pytest.approx(0.110) and line.cost(5) == pytest.approx(0.200)


def test_acceptance_counts_only_the_tokens_tested() -> None:
    """α = 0.5 at γ = 4 accepts about 0.94 tokens of 4 drafted per step; counting the
    untested ones as rejected would put α at 0.23."""
    rng = random.Random(0)
    c = Costs()
    estimates = []
    for _ in range(400):
        accepted = 0
        while accepted < 4 and rng.random() < 0.5:
            accepted += 1
        c.record_verdict(accepted, 4)
        estimates.append(c.alpha)
    assert 0.45 < sum(estimates[50:]) / len(estimates[50:]) < 0.55


@dataclass
class Physics:
    """Per-step costs of a simulated engine pair, in seconds."""

    target: dict[int, float]  # a pass over n tokens
    draft: float  # one draft token
    catchup: float  # per token the draft reads to catch up
    alpha: float  # each draft token accepted with this probability

    def pass_s(self, n: int) -> float:
        known = max(k for k in self.target if k <= n)
        slope = (self.target[max(self.target)] - self.target[1]) / max(max(self.target) - 1, 1)
        return self.target[known] + slope * (n - known)


def simulate(physics: Physics, requests: int = 40, prompt: int = 300, tokens: int = 128, seed: int = 0) -> list[float]:
    """Seconds per token of each of `requests` requests in a row under the policy,
    driven the way Run.step drives it."""
    rng = random.Random(seed)
    policy = Policy(gamma_max=8, probe_every=16)
    c = policy.costs
    per_request = []
    if physics.draft == 0.0:
        c.draft_s = 0.0  # prompt lookup: the backend knows it is free
    for _ in range(requests):
        # The target prefilled and drew one token; the draft read nothing yet. The
        # backend guesses catch-up from the target's prefill (here: twice the truth).
        c.guess_catchup(2 * physics.catchup, 1.0)
        pending, made, total = prompt, 1, 0.0
        while made < tokens:
            gamma = max(min(policy.choose(pending, tokens - made), tokens - made - 1), 0)
            seconds = 0.0
            if gamma:
                catchup = pending * physics.catchup if pending > 1 else 0.0
                seconds += catchup + gamma * physics.draft
                if pending > 1 and c.draft_s is not None:
                    c.record_catchup(pending, catchup)
                c.record_draft(physics.draft)
            accepted = 0
            while accepted < gamma and rng.random() < physics.alpha:
                accepted += 1
            verify = physics.pass_s(gamma + 1)
            c.record_pass(gamma + 1, verify)
            if gamma:
                c.record_verdict(accepted, gamma)
            seconds += verify
            policy.observe(gamma, seconds, accepted + 1)
            pending = pending + 1 if not gamma else (1 if accepted == gamma else 0)
            total += seconds
            made += accepted + 1
        per_request.append(total / (made - 1))
    return per_request


def best_fixed(physics: Physics) -> float:
    """Expected seconds per token of the best fixed γ (0 included), catch-up aside."""
    a = physics.alpha
    return min(
        physics.pass_s(1) if g == 0 else (g * physics.draft + physics.pass_s(g + 1)) * (1 - a) / (1 - a ** (g + 1))
        for g in range(9)
    )


CPU_TARGET = {1: 0.080, 2: 0.108, 3: 0.135, 5: 0.155}  # measured here, Qwen2.5-Coder-1.5B Q4_K_M, 2 threads


@pytest.mark.parametrize("alpha", [0.3, 0.6, 0.9, 0.97])
def test_on_this_cpu_adaptive_is_never_much_slower_than_the_target_alone(alpha: float) -> None:
    """The 0.5B draft at 0.55 of the target's cost and a 5 ms-per-token catch-up:
    drafting does not pay even when the draft is nearly always right (a new request's
    catch-up costs more than it would save), and what finding that out costs, over
    40 requests, is within 5% (the issue's bound). The request a probe lands on pays
    the draft's catch-up of its whole context (here 1.5 s, a fifth of it): the budget
    spreads probes out, it cannot make one cheap."""
    cpu = Physics(CPU_TARGET, draft=0.045, catchup=0.005, alpha=alpha)
    runs = simulate(cpu)
    assert sum(runs) / len(runs) <= 1.05 * cpu.pass_s(1)
    assert sum(r > 1.01 * cpu.pass_s(1) for r in runs) <= len(runs) // 10  # probes are rare


@pytest.mark.parametrize("alpha", [0.6, 0.8, 0.95])
def test_where_drafting_pays_adaptive_finds_it(alpha: float) -> None:
    """A GPU's memory-bound decode: a pass over 9 tokens costs little more than one,
    the draft a tenth of the target, catch-up cheap. The first probe waits for the
    probe budget (a few requests), and from then on adaptive γ runs within 10% of the
    best fixed γ."""
    gpu = Physics({1: 0.020, 9: 0.024}, draft=0.002, catchup=0.0002, alpha=alpha)
    runs = simulate(gpu)
    best = best_fixed(gpu)
    assert best < 0.7 * gpu.pass_s(1)  # drafting pays a lot here
    found = next(i for i, r in enumerate(runs) if r < 0.9 * gpu.pass_s(1))
    assert found <= 4
    steady = runs[found + 1 :]
    assert sum(steady) / len(steady) <= 1.10 * best


def test_prompt_lookup_drafts_for_free_and_adaptive_uses_it() -> None:
    lookup = Physics(CPU_TARGET, draft=0.0, catchup=0.0, alpha=0.8)
    runs = simulate(lookup)
    assert sum(runs) / len(runs) <= 1.10 * best_fixed(lookup) < 0.8 * lookup.pass_s(1)
