"""Speculative sampling (Leviathan et al., 2023; Chen et al., 2023) as plain
functions on probability vectors, so the maths is tested apart from any engine.

The draft proposed tokens x_1..x_γ from its distributions q_1..q_γ; the target
scored the same positions in one pass, giving p_1..p_γ+1. Token x_i is accepted
with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the token is
drawn from norm(max(0, p_i - q_i)) instead and the step ends; if all γ are
accepted, a bonus token is drawn from p_γ+1. Whatever q is, each emitted token is
distributed exactly as the target's p: the output is the target's.

Both distributions are the request's, from the reference sampling order
(backends/sampling.py: constrained, biased, penalized, warped), for the draft and
the target alike, so "the target's distribution" means the one the request asked
for. Greedy decoding is the limit where p and q are one-hot: a draft token is kept
iff it is the target's argmax, and the correction is the target's argmax."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.sampling import Probs, draw


@dataclass(slots=True, frozen=True)
class Verdict:
    accepted: int  # how many draft tokens were kept (0..γ)
    token: int  # the token drawn after them: the correction, or the bonus when all were kept


def verify(draft: list[int], q: list[Probs], p: list[Probs], rng: np.random.Generator) -> Verdict:
    """Accept a prefix of `draft` (γ tokens drawn from `q`), given the target's `p`
    at the γ+1 positions, and draw the next token."""
    if len(q) != len(draft) or len(p) != len(draft) + 1:
        raise ValueError(f"γ={len(draft)} draft tokens need γ draft and γ+1 target distributions")
    for i, x in enumerate(draft):
        px, qx = p[i][x], q[i][x]
        if qx > 0 and (px >= qx or rng.random() < px / qx):
            continue
        residual = np.maximum(p[i] - q[i], 0.0)
        mass = residual.sum()
        # mass is 0 only when p == q, where rejection has probability 0; guard anyway.
        dist = residual / mass if mass > 0 else p[i]
        return Verdict(i, draw(dist, rng))
    return Verdict(len(draft), draw(p[len(draft)], rng))
