"""Prompt lookup (Saxena, 2023): draft the tokens that followed the latest earlier
occurrence of the text's last n tokens. Text that repeats its input (code edits,
quotes, summaries, RAG answers) is drafted for free; plain prose rarely matches.

`lookup` scans the text (the speculative backend calls it once per step of one
sequence). `Lookup` keeps an index of every n-gram's latest follower, updated as
tokens arrive, so the continuous batcher can ask for every running sequence at
every step for the price of a dict lookup."""

from __future__ import annotations

from dataclasses import dataclass


def lookup(context: list[int], gamma: int, ngram: int) -> list[int]:
    """At most γ tokens that followed the latest earlier occurrence of the context's
    last n tokens, n from `ngram` down to 1."""
    for n in range(min(ngram, len(context) - 1), 0, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                follow = context[start + n : start + n + gamma]
                if follow:
                    return follow
    return []


class Lookup:
    """The tokens of one sequence and, for each n in `sizes`, where each n-gram was
    last followed: `propose` matches the longest n first."""

    def __init__(self, tokens: list[int], sizes: tuple[int, ...] = (3, 2)) -> None:
        self.sizes = sizes
        self.tokens: list[int] = []
        self.follower: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after it, latest
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens) - 1  # the new token follows the n-grams that end just before it
            for n in self.sizes:
                if end >= n:
                    self.follower[tuple(self.tokens[end - n : end])] = end

    def propose(self, gamma: int) -> list[int]:
        """At most γ tokens that followed the latest earlier occurrence of the tail."""
        if gamma <= 0:
            return []
        for n in self.sizes:
            if len(self.tokens) > n and (at := self.follower.get(tuple(self.tokens[-n:]))) is not None:
                return self.tokens[at : at + gamma]
        return []


@dataclass(slots=True)
class DraftPolicy:
    """How many tokens one sequence drafts next: more while drafts are kept whole,
    fewer after a partial miss, none for a while after two misses in a row (a rest
    that doubles each time, up to 128 steps), so text with nothing to copy pays for
    a few rejected rows now and then, not every step."""

    draft_max: int
    gamma: int = 4
    misses: int = 0  # drafts in a row of which nothing was kept
    backoff: int = 0  # rests in a row; each doubles the next
    cooldown: int = 0  # steps left without drafting
    kept_rate: float = 0.6  # the share of its draft tokens kept lately (an average with decay)

    def __post_init__(self) -> None:
        self.gamma = min(self.gamma, self.draft_max)

    def allowance(self) -> int:
        """This step's γ (0 while resting: the call counts the step)."""
        if self.cooldown:
            self.cooldown -= 1
            return 0
        return self.gamma

    def pays(self, threshold: float) -> bool:
        """Whether drafts are kept often enough to pay for their rows (`StepCost`)."""
        return self.kept_rate >= threshold

    def rest(self) -> None:
        """Stop drafting for a while, longer each time (a probe follows each rest)."""
        self.cooldown = 8 << min(self.backoff, 4)
        self.backoff += 1
        self.misses = 0
        self.gamma = max(1, self.draft_max // 2)

    def update(self, kept: int, drafted: int) -> None:
        self.kept_rate = 0.7 * self.kept_rate + 0.3 * kept / drafted
        if kept == drafted:
            self.gamma = min(2 * self.gamma, self.draft_max)
        elif kept:
            self.gamma = kept
        if kept:
            self.misses = self.backoff = 0
            return
        self.misses += 1
        if self.misses >= 2:
            self.rest()


class StepCost:
    """A batched step's time as `fixed + per_row * rows`, fitted to the steps as they
    run (least squares with a decay, so it follows the load and the machine). A draft
    token costs a row; kept, it saves the sequence a later row and its share of a
    step's fixed cost. So with n sequences decoding, drafting pays when the share of
    draft tokens kept exceeds per_row / (fixed / n + per_row): on a CPU, where rows
    are dear, that is ~0.5 alone and ~0.8 at four (measured here), while on a GPU
    rows are nearly free and any match pays. Until the steps have varied in size,
    a row is taken to cost what the fixed part does."""

    def __init__(self, decay: float = 0.98) -> None:
        self.decay = decay
        self.n = self.x = self.y = self.xx = self.xy = 0.0

    def record(self, rows: int, seconds: float) -> None:
        d = self.decay
        self.n, self.x, self.y = d * self.n + 1, d * self.x + rows, d * self.y + seconds
        self.xx, self.xy = d * self.xx + rows * rows, d * self.xy + rows * seconds

    def fit(self) -> tuple[float, float] | None:
        """(fixed, per_row) in seconds, or None while the steps have not varied enough."""
        if self.n < 8:
            return None
        var = self.xx / self.n - (self.x / self.n) ** 2
        if var < 0.25:
            return None
        per_row = (self.xy / self.n - self.x * self.y / self.n**2) / var
        fixed = self.y / self.n - per_row * self.x / self.n
        return (fixed, per_row) if fixed > 0 and per_row > 0 else None

    def threshold(self, decoding: int) -> float:
        fit = self.fit()
        fixed, per_row = fit if fit is not None else (1.0, 1.0)
        return per_row / (fixed / max(decoding, 1) + per_row)
