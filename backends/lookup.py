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

    def __post_init__(self) -> None:
        self.gamma = min(self.gamma, self.draft_max)

    def allowance(self) -> int:
        """This step's γ (0 while resting: the call counts the step)."""
        if self.cooldown:
            self.cooldown -= 1
            return 0
        return self.gamma

    def update(self, kept: int, drafted: int) -> None:
        if kept == drafted:
            self.gamma = min(2 * self.gamma, self.draft_max)
        elif kept:
            self.gamma = kept
        if kept:
            self.misses = self.backoff = 0
            return
        self.misses += 1
        if self.misses >= 2:
            self.cooldown = 8 << min(self.backoff, 4)
            self.backoff += 1
            self.misses = 0
            self.gamma = max(1, self.draft_max // 2)
