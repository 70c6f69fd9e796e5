"""Prompts' KV kept in host memory after their slot is taken (llama-server's
`--cache-ram`). The slots hold eight sequences' cells; a prompt seen a minute ago,
whose slot has since served others, would be computed again. So when a new prompt
is about to overwrite a slot's cells, the sequence they hold is saved first
(llama.cpp's per-sequence state: the cells' keys and values, about 23 KB a token for
SmolLM2 in f16), and a later prompt that starts with it restores it into its slot
instead: a copy of a megabyte where computing 30 prompt tokens takes ~60 ms on two
cores. The least recently used entries go first once the store passes its budget."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PromptStore:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._entries: OrderedDict[tuple[int, ...], bytearray] = OrderedDict()  # oldest use first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens: list[int]) -> bool:
        return tuple(tokens) in self._entries

    def put(self, tokens: list[int], state: bytearray) -> None:
        """Keep `state`, the KV of `tokens`, dropping the least recently used beyond the budget."""
        if len(state) > self.budget:
            return
        key = tuple(tokens)
        old = self._entries.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self._entries[key] = state
        self.used += len(state)
        while self.used > self.budget:
            _, dropped = self._entries.popitem(last=False)
            self.used -= len(dropped)

    def longest(self, prompt: list[int]) -> tuple[int, bytearray] | None:
        """The entry sharing the longest prefix with `prompt`: (that length, its state)."""
        best, found, wanted = 0, None, tuple(prompt)
        for key in self._entries:
            n = common_prefix(key, wanted)
            if n > best:
                best, found = n, key
        if found is None:
            return None
        self._entries.move_to_end(found)  # used: the last to go
        return best, self._entries[found]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of two lists (or two tuples), by slice
    comparisons (C loops) and bisection: microseconds for thousands of tokens."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
