"""Adaptive γ: how many tokens to draft next, from what drafting has measurably cost.

Every figure here is measured on the live requests, around the whole of each part
of a step, not only its decode calls: a draft token is its decode plus warping and
drawing; a target pass over n tokens runs from its decode to the last emitted
token (logits, warping, verification, KV rollback, the stream). What a step costs
is therefore what the wall clock saw, and the choice compares measured seconds per
emitted token, drafting against the target alone:

    tokens/s ratio(γ) = E[tokens per step] · c(1) / (γ·c_d + c(γ+1))      (Leviathan et al., eq. 1)

with E[tokens per step] = (1 - α^(γ+1)) / (1 - α). γ = 0, the target alone, is 1.

Three things the decode costs alone missed, and how they are handled:
- Acceptance α is estimated from tokens *tested*: a step stops at its first
  rejection, so the tokens after it were never judged. Counting them as rejected
  (accepted / drafted) makes α fall as γ grows, and long drafts look worse than they are.
- The draft's catch-up: while γ is 0 the draft reads nothing, so the first step that
  drafts must feed it every token since (the whole prompt, for a new request).
  Drafting starts only when the gain over the rest of the request pays for that.
- Noise: a pass over more tokens never costs less than one over fewer (costs are
  made non-decreasing), and leaving the target alone takes a margin, so a noisy
  1.01 does not flip the mode.

With γ = 0 a probe (γ = 1; γ = 2 the first time, to time a draft token on its
own and a pass over 3) measures α and the draft again. A probe costs mostly the
draft's catch-up, so probes, the first one included, are paid from a budget: what
they cost beyond plain decoding stays under 2% of the time spent on plain steps.
On a CPU where the draft's prefill is dear, that is a probe every few hundred
tokens; where prefill is cheap (a GPU), every `probe_every` steps."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

DECAY = 0.97  # per token tested: α follows roughly the last 30-60 tokens
PRIOR = (1.0, 2.0)  # α starts at 1/2, worth two tokens of evidence
MARGIN = 0.03  # drafting must promise 3% over the target alone to start
PROBE_BUDGET = 0.02  # what probes may cost, as a share of the time spent without drafting
HORIZON = 128  # tokens a catch-up is paid back over, at most (a request may stop early)


@dataclass(slots=True)
class Costs:
    """In-situ measurements, in seconds."""

    draft_s: float | None = None  # one draft token (None: not yet timed; prompt lookup: ~0)
    catchup_s: float = 0.0  # per token the draft reads to catch up (guessed from the target's prefill until measured)
    passes: dict[int, list[float]] = field(default_factory=dict)  # n: the latest passes over n tokens
    accepted: float = 0.0  # decayed counts of draft tokens accepted and tested
    tested: float = 0.0

    @property
    def alpha(self) -> float:
        return (self.accepted + PRIOR[0]) / (self.tested + PRIOR[1])

    def record_verdict(self, accepted: int, gamma: int) -> None:
        tested = accepted + (accepted < gamma)  # the rejected one was tested; those after it were not
        keep = DECAY**tested
        self.accepted = self.accepted * keep + accepted
        self.tested = self.tested * keep + tested

    def record_pass(self, n: int, seconds: float) -> None:
        self.passes[n] = [*self.passes.get(n, [])[-15:], seconds]

    def record_draft(self, seconds: float) -> None:
        self.draft_s = seconds if self.draft_s is None else 0.7 * self.draft_s + 0.3 * seconds

    def guess_catchup(self, prefill_s: float, size_ratio: float) -> None:
        """Before any catch-up is measured: the target's prefill per token, scaled by
        the draft's size (prefill is compute-bound, so in proportion to the weights)."""
        if not self.catchup_s:
            self.catchup_s = prefill_s * size_ratio

    def record_catchup(self, tokens: int, seconds: float) -> None:
        per = max(seconds, 0.0) / tokens
        self.catchup_s = per if not self.catchup_s else 0.7 * self.catchup_s + 0.3 * per

    @property
    def plain_s(self) -> float | None:
        """Seconds per token of the target alone (a pass over one token), if measured."""
        return statistics.median(self.passes[1]) if 1 in self.passes else None

    def cost(self, n: int) -> float:
        """A target pass over n tokens: the median of those measured at n, else a line
        through the sizes measured (n times one token's, while only that is known:
        the pessimistic guess, right for a compute-bound CPU); never less than a pass
        over fewer tokens."""
        medians = {size: statistics.median(ts) for size, ts in self.passes.items()}
        sizes = sorted(medians)

        def base(m: int) -> float:
            if m in medians:
                return medians[m]
            if len(sizes) < 2:
                return m * medians[sizes[0]] / sizes[0] if sizes else float(m)
            lower, upper = [s for s in sizes if s < m], [s for s in sizes if s > m]
            if lower and upper:
                lo, hi = lower[-1], upper[0]  # between two measured sizes
            else:
                lo, hi = (sizes[-2], sizes[-1]) if lower else (sizes[0], sizes[1])
            return medians[lo] + (medians[hi] - medians[lo]) / (hi - lo) * (m - lo)

        return max(base(m) for m in range(1, n + 1))

    def gain(self, gamma: int) -> float:
        """Expected tokens/s at γ over the target alone."""
        if gamma == 0 or self.draft_s is None:
            return 1.0
        alpha = min(self.alpha, 0.999)
        tokens = (1 - alpha ** (gamma + 1)) / (1 - alpha)
        return tokens * self.cost(1) / (gamma * self.draft_s + self.cost(gamma + 1))

    def best(self, gamma_max: int) -> tuple[int, float]:
        """The γ with the highest expected tokens/s, and that ratio; (0, 1.0) when none beats the target alone."""
        best = (0, 1.0)
        for gamma in range(1, gamma_max + 1):
            ratio = self.gain(gamma)
            if ratio > best[1]:
                best = (gamma, ratio)
        return best


@dataclass(slots=True)
class Policy:
    """The mode (γ, 0 for the target alone) across requests, and when to probe."""

    gamma_max: int
    probe_every: int  # plain steps between probes, at least
    costs: Costs = field(default_factory=Costs)
    gamma: int = 0
    since_probe: int = 0
    probing: bool = False  # the step being run is a probe
    plain_time: float = 0.0  # seconds spent on plain steps
    explored: float = 0.0  # seconds probes cost beyond what plain steps would have

    def choose(self, pending: int, remaining: int) -> int:
        """γ for the next step of a request whose draft lacks `pending` tokens and
        which may emit `remaining` more."""
        c = self.costs
        self.probing = False
        plain = c.plain_s
        if plain is None:
            return 0  # a plain step first: it measures what drafting must beat
        best, gain = c.best(self.gamma_max)
        self.gamma = best if gain > (1.0 if self.gamma else 1.0 + MARGIN) else 0
        if self.gamma:
            # Catching the draft up costs pending·catchup_s now; drafting saves
            # (1 - 1/gain) of a plain token's time on each token still to come.
            saving = min(remaining, HORIZON) * plain * (1 - 1 / gain)
            if pending <= 1 or saving > pending * c.catchup_s:
                return self.gamma
        # The target alone, and a probe when what probes have cost stays within
        # PROBE_BUDGET of the time spent on plain steps: a probe costs mostly the
        # draft's catch-up (estimated from the target's prefill until measured).
        self.since_probe += 1
        if remaining <= 2 or self.since_probe < self.probe_every:
            return 0
        cost = pending * c.catchup_s + (plain if c.draft_s is None else c.draft_s)
        if self.explored + cost > PROBE_BUDGET * self.plain_time:
            return 0
        self.since_probe, self.probing = 0, True
        return 2 if c.draft_s is None else 1  # γ = 2 until a draft token was timed on its own

    def observe(self, gamma: int, seconds: float, tokens: int) -> None:
        """A step ran at γ for `seconds` and emitted `tokens`."""
        if gamma == 0:
            self.plain_time += seconds
        elif self.probing:
            self.explored += max(seconds - tokens * (self.costs.plain_s or 0.0), 0.0)
