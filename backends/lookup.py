"""Prompt lookup (Saxena, 2023): draft the tokens that followed the latest earlier
occurrence of the text's last n tokens. Text that repeats its input (code edits,
quotes, summaries, RAG answers) is drafted for free; plain prose rarely matches.

`lookup` scans the text (the speculative backend calls it once per step of one
sequence). `Lookup` keeps an index of every n-gram's latest follower, updated as
tokens arrive, so the continuous batcher can ask for every running sequence at
every step for the price of a dict lookup. `History` indexes the texts of finished
requests the same way, so a request sent again (a retry, a regenerate, another user
with the same question) has its earlier answer drafted."""

from __future__ import annotations

import bisect
from collections.abc import Callable


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


MATCH_CAP = 32  # a match this long is as good as any longer one


_MIN_COPY = 4  # a match this long is a copy under way: its place is followed (`Lookup`)


class Lookup:
    """The tokens of one sequence and, for each n in `sizes`, where each n-gram was
    last followed: `match` finds the longest n first, then measures how far back the
    match really goes (a long match is a copy under way, whose drafts are kept).

    With `substitutions`, a copy is followed through consistent one-token changes, as
    a code edit that renames an identifier makes: the place in the text being copied
    is kept (`cursor`), and where the sequence writes another token than the one
    there, then goes on with the token after it, the change is learnt (`subs`), the
    copy goes on from there, and drafts write the change wherever the copied text has
    the old token. (Without it, each change broke the copy: the n-grams that end in
    the new token are not in the text copied, and the drafts that matched again came
    from short matches, or from the copy's own first lines; on Qwen2.5-0.5B's code
    edits, which wrote `renamed` for `self` throughout, lookup's drafts lost a third
    of their time to it.) A change the sequence then does not write is forgotten."""

    def __init__(self, tokens: list[int], sizes: tuple[int, ...] = (8, 3, 2), *, substitutions: bool = False) -> None:
        self.sizes = sizes
        self.tokens: list[int] = []
        self.follower: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after it, latest
        self.substitutions = substitutions
        self.subs: dict[int, int] = {}  # a token of the copied text -> the token the sequence writes for it
        self.cursor: int | None = None  # where in the text the next token of a copy under way is
        self._changed: tuple[int, int] | None = None  # (the cursor, the token written) where a copy differed
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            if self.substitutions:
                self._follow(token)
            self.tokens.append(token)
            end = len(self.tokens) - 1  # the new token follows the n-grams that end just before it
            for n in self.sizes:
                if end >= n:
                    self.follower[tuple(self.tokens[end - n : end])] = end

    def _follow(self, token: int) -> None:
        """Move the copy's place past `token`, the sequence's next: on where it equals
        the text's token there (or its learnt change); a change learnt once the token
        after it equals the text's again; a learnt change not written, forgotten."""
        at, changed, self._changed = self.cursor, self._changed, None
        if at is not None and at < len(self.tokens):
            source = self.tokens[at]
            expected = self.subs.get(source, source)
            self.cursor = at + 1
            if token == expected:
                return
            if token == source:  # the text's own token, not the change: forget the change
                del self.subs[source]
                return
            self.cursor, self._changed = None, (at, token)
        elif changed is not None:
            at, written = changed
            if at + 1 < len(self.tokens) and token == self.tokens[at + 1]:
                self.subs[self.tokens[at]] = written
                self.cursor = at + 2

    def match(self) -> tuple[int, int]:
        """(where the tokens that followed the latest earlier occurrence of the tail
        start, how many tokens of the tail that occurrence matches, up to MATCH_CAP);
        (0, 0) when even the shortest n-gram has not occurred before. With
        `substitutions`, the copy under way where it matches as far back (its learnt
        changes matching too), and a long match's place is followed from here on."""
        tokens, end = self.tokens, len(self.tokens)
        at, length = 0, 0
        for n in self.sizes:
            if end > n and (found := self.follower.get(tuple(tokens[-n:]))) is not None:
                at, length = found, n
                while length < MATCH_CAP and at - length > 0 and tokens[at - length - 1] == tokens[end - length - 1]:
                    length += 1
                break
        if not self.substitutions:
            return at, length
        copy = self._copy_length()
        if copy and copy >= length:
            assert self.cursor is not None
            return self.cursor, copy
        if length >= _MIN_COPY:
            self.cursor = at
        return at, length

    def _copy_length(self) -> int:
        """How many of the tail's tokens equal, learnt changes allowed, the text's
        tokens before the copy's place, up to MATCH_CAP (0: no copy under way)."""
        at, tokens, end = self.cursor, self.tokens, len(self.tokens)
        if at is None or at >= end:
            return 0
        n = 0
        while n < MATCH_CAP and at - n - 1 >= 0:
            source = tokens[at - n - 1]
            if tokens[end - n - 1] != source and tokens[end - n - 1] != self.subs.get(source):
                break
            n += 1
        return n

    def propose(self, gamma: int) -> list[int]:
        """At most γ tokens that followed the latest earlier occurrence of the tail."""
        at, length = self.match()
        return self.tokens[at : at + gamma] if length and gamma > 0 else []

    def draft(self, at: int, k: int) -> list[int]:
        """k tokens from `at` on (a `match`). Where they would run past the text's end,
        the match overlaps the tail, a loop of period end - at, and the draft goes on
        round it: a text that repeats itself is drafted as far as it is trusted, not
        one period at a time."""
        period = len(self.tokens) - at
        cycle = self.tokens[at:]
        draft = (cycle * (k // period + 1))[:k] if k > period else cycle[:k]
        return [self.subs.get(t, t) for t in draft] if self.subs else draft


class History:
    """The texts of recent finished sequences (the scheduler adds each one's output
    and the prompt's last tokens before it), for drafts across requests: where a
    sequence's tail matches one of them, the tokens that followed there may be its
    draft (`pick_source` weighs it against the sequence's own text). Indexed by
    n-grams of one size, `n`, long enough that a match is rarely chance (an 8-gram
    in tens of thousands of tokens); `match` then measures how far back the match
    goes, as `Lookup.match` does. Bounded: past `capacity` tokens the oldest texts
    go, and their index entries with them (each text's n-grams are added and taken
    away once, so neither costs more than its own tokens): ~300 bytes a token, the
    token ids, texts and index, measured with tracemalloc (`TOKEN_BYTES`, the memory
    budget's figure, has room above that)."""

    TOKEN_BYTES = 360

    def __init__(self, capacity: int, n: int = 8) -> None:
        self.capacity = capacity
        self.n = n
        self.texts: dict[int, list[int]] = {}  # by id, oldest first
        self.size = 0  # tokens in `texts`
        self.added = 0  # texts ever added: the next one's id
        self.follower: dict[tuple[int, ...], tuple[int, int]] = {}  # n-gram -> (text, index after it), latest

    def add(self, tokens: list[int]) -> None:
        if len(tokens) <= self.n or len(tokens) > self.capacity:
            return
        text_id, self.added = self.added, self.added + 1
        self.texts[text_id] = tokens
        self.size += len(tokens)
        for end in range(self.n, len(tokens)):
            self.follower[tuple(tokens[end - self.n : end])] = (text_id, end)
        while self.size > self.capacity:  # the oldest go, with the entries that still point to them
            old_id = next(iter(self.texts))
            old = self.texts.pop(old_id)
            self.size -= len(old)
            for end in range(self.n, len(old)):
                key = tuple(old[end - self.n : end])
                if self.follower.get(key, (-1, 0))[0] == old_id:  # a text may hold an n-gram twice
                    del self.follower[key]

    def match(self, tokens: list[int]) -> tuple[int, int, int]:
        """(the text, where the tokens that followed the latest occurrence of the
        tail of `tokens` start in it, how many tokens of the tail match, up to
        MATCH_CAP); (-1, 0, 0) when none of the texts has the tail's last n tokens."""
        end = len(tokens)
        found = self.follower.get(tuple(tokens[-self.n :])) if end >= self.n else None
        if found is None or (text := self.texts.get(found[0])) is None:
            return -1, 0, 0
        text_id, at = found
        length = self.n
        while length < min(MATCH_CAP, end) and at - length > 0 and text[at - length - 1] == tokens[end - length - 1]:
            length += 1
        return text_id, at, length

    def available(self, text_id: int, at: int) -> int:
        """How many tokens follow `at` in the text (0 once the text has gone)."""
        text = self.texts.get(text_id)
        return len(text) - at if text is not None else 0

    def draft(self, text_id: int, at: int, k: int) -> list[int]:
        return self.texts[text_id][at : at + k]


def pick_source(
    own: tuple[int, int], found: tuple[int, int, int], rate: Callable[[int, int], float]
) -> tuple[int, int, int, float]:
    """Where a sequence drafts from: its own text's match (`own`: `Lookup.match`) or
    the history's (`found`: `History.match`), whichever promises the surer draft by
    its record (`rate(length, source)`), the longer on a tie, its own on an exact tie.
    Not simply the longer: both cap at MATCH_CAP, and a code edit sent again matches
    its prompt's function as far back as its earlier answer, but only the answer has
    the edits in it. Returns (the history text, -1 for its own; where the draft
    starts; the match's length, 0 for none; the rate)."""
    at, length = own
    text, found_at, found_length = found
    options = [(rate(length, 0), length, -1, at)] if length else []
    if found_length:
        options.append((rate(found_length, 1), found_length, text, found_at))
    if not options:
        return -1, 0, 0, 0.0
    best_rate, best_length, best_text, best_at = max(options, key=lambda o: (o[0], o[1]))  # first of equals: own
    return best_text, best_at, best_length, best_rate


def bucket(length: int) -> int:
    """Match lengths in doublings: 1, 2-3, 4-7, 8-15, 16-31, 32."""
    return min(length, MATCH_CAP).bit_length()


class Acceptance:
    """How often draft tokens are kept, by the length of the match that drafted them
    and where it was (`SOURCES`): decayed counts of tokens kept and tokens tested. A
    draft's verification stops at its first rejected token, so the tokens after it
    were never tested: counting them as rejected would make long drafts look worse
    than they are."""

    SOURCES = 2  # where drafts come from: 0 the sequence's own text, 1 the `History`

    def __init__(self, decay: float = 0.98) -> None:
        self.decay = decay
        self.kept = [0.0] * ((bucket(MATCH_CAP) + 1) * self.SOURCES)
        self.tested = [0.0] * ((bucket(MATCH_CAP) + 1) * self.SOURCES)

    def rate(self, length: int, prior: float, weight: float, source: int = 0) -> float:
        """The share of tested tokens kept after a match this long in the source,
        `prior` counting as `weight` tokens of evidence."""
        b = bucket(length) + source * (bucket(MATCH_CAP) + 1)
        return (self.kept[b] + weight * prior) / (self.tested[b] + weight)

    def record(self, length: int, kept: int, tested: int, source: int = 0) -> None:
        b = bucket(length) + source * (bucket(MATCH_CAP) + 1)
        keep = self.decay**tested
        self.kept[b] = self.kept[b] * keep + kept
        self.tested[b] = self.tested[b] * keep + tested


class StepCost:
    """What a decode step costs by the number of rows in it: the time of the steps that
    ran with that many rows (an average with decay, so it follows the load and the
    machine), between measured sizes a straight line, never less for more rows.

    Measured, not modelled, because it is far from a line on a CPU: on 2 cores,
    SmolLM2 Q4_1 takes 6 ms for one row, 13 for two, 30 for eight and 52 for
    sixteen; Qwen2.5-0.5B Q4_K_M 17, 40, 75 and 96 ms. ggml's kernels change with
    the batch's size, so a short draft can cost more than the tokens it saves and a
    long one much less per token. Nor is it smooth between sizes: the K-quant
    kernels take rows in tiles, and on Qwen 14 rows took 152 ms where 16 took 111.
    So the scheduler times a ladder of sizes at start (`CALIBRATION`: multiples of
    the tiles past 4) and drafts only to step sizes it has measured (`measured`),
    timing every decode step of one weight pass after that (a step split into passes,
    `passes`, would be recorded under rows it did not run together; `cost` is for
    the sizes between)."""

    CALIBRATION = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight  # a new step's weight in its size's average
        self.times: dict[int, float] = {}

    def record(self, rows: int, seconds: float) -> None:
        old = self.times.get(rows)
        self.times[rows] = seconds if old is None else old + self.weight * (seconds - old)

    def measured(self, rows: int) -> float | None:
        """The average time of steps of exactly `rows` rows, if any ran."""
        return self.times.get(rows)

    def cost(self, rows: int) -> float:
        """Seconds for a step of `rows` rows, measured or between measured sizes (1.0 a
        row while nothing is measured)."""
        sizes = sorted(self.times)
        if not sizes:
            return float(rows)
        if len(sizes) == 1:
            return self.times[sizes[0]] * rows / sizes[0]
        i = min(max(bisect.bisect_left(sizes, rows), 1), len(sizes) - 1)  # the segment: below, or past the ends
        lo, hi = sizes[i - 1], sizes[i]
        line = self.times[lo] + (self.times[hi] - self.times[lo]) * (rows - lo) / (hi - lo)
        return max([line, *(self.times[n] for n in sizes[:i] if n <= rows)])  # more rows never cost less


def passes(counts: list[int], slots: list[int] | None) -> list[int]:
    """The weight passes a decode step takes, the rows of each, for `counts` rows of
    each sequence in `slots` (ascending). In one KV stream (`slots` None) any rows are
    one pass. With a stream per sequence llama.cpp splits the batch
    (`split_equal(sequential=true)`) into micro-batches of sequences with consecutive
    ids, the same number of rows from each: four sequences of a row each are one pass,
    one of them drafting 8 tokens adds a pass of 8 rows, all four drafting 8 is one
    pass of 36."""
    if slots is None:
        return [sum(counts)]
    left = [n for _, n in sorted(zip(slots, counts, strict=True))]
    ids = sorted(slots)
    out: list[int] = []
    while True:
        run: list[int] = []  # indices into ids: the first sequence with rows left, then its consecutive ids
        for i, n in enumerate(left):
            if run and (n == 0 or ids[i] != ids[run[-1]] + 1):
                break
            if n:
                run.append(i)
        if not run:
            return out
        m = min(left[i] for i in run)
        for i in run:
            left[i] -= m
        out.append(m * len(run))


def plan_drafts(candidates: list[tuple[float, int]], cost: StepCost, slots: list[int] | None = None) -> list[int]:
    """How many tokens each decoding sequence drafts this step. `candidates`: for each
    decoding sequence, the rate its draft tokens are kept at (each if those before it
    were) and the most it may draft (0: none); `slots`: their KV streams, or None for
    one unified stream (see `passes`). A draft of k tokens adds k rows and rate +
    rate**2 + ... + rate**k expected tokens. Two plans are weighed: sequences taken
    surest first, each drafting the k that gives the step the most expected tokens per
    second so far; and every sequence drafting the same k (as far as its cap allows),
    which keeps a step with a stream per sequence in one pass. The better one is
    taken if it beats the step without drafts (so none, where rows are dear and drafts
    uncertain). Only passes of sizes that have been timed are drafted to (`StepCost`:
    between them, costs jump)."""
    n = len(candidates)
    if not n:
        return []
    gains = [_gains(rate, cap) for rate, cap in candidates]  # expected tokens of a k-token draft, by k

    def seconds(plan: list[int]) -> float | None:
        total = 0.0
        for rows in passes([1 + k for k in plan], slots):
            timed = cost.measured(rows)
            if timed is None:
                return None
            total += timed
        return total

    def value(plan: list[int]) -> float:
        took = seconds(plan)
        return 0.0 if took is None else (n + sum(g[k] for g, k in zip(gains, plan, strict=True))) / took

    none = [0] * n
    best, best_value = none, n / sum(cost.cost(rows) for rows in passes([1] * n, slots))
    timed = sorted(cost.times)
    greedy = none.copy()
    for i in sorted(range(n), key=lambda i: -candidates[i][0]):
        # The k worth trying: those that make a timed size of the step's one pass (one
        # stream), of a pass of this sequence alone, or join another's pass (a stream
        # each); every other k prices a pass that was never timed.
        others = n + sum(greedy) - greedy[i]
        ks = {s - others for s in timed} | {s - 1 for s in timed} | set(greedy)
        pick, pick_value = 0, value(greedy) if any(greedy) else best_value
        for k in sorted(k for k in ks if 1 <= k <= candidates[i][1]):
            greedy[i] = k
            if (v := value(greedy)) > pick_value:
                pick, pick_value = k, v
        greedy[i] = pick
    longest = max((cap for _, cap in candidates), default=0)
    uniform = ([min(k, cap) for _, cap in candidates] for k in range(1, longest + 1))
    for plan in [greedy, *uniform]:
        if any(plan) and (v := value(plan)) > best_value:
            best, best_value = plan, v
    return best


def _gains(rate: float, cap: int) -> list[float]:
    """Expected tokens kept of a draft of k tokens, for k from 0 to `cap`."""
    out, p = [0.0], 1.0
    for _ in range(cap):
        p *= rate
        out.append(out[-1] + p)
    return out
