"""Prompts' KV kept in host memory after their slot is taken (llama-server's
`--cache-ram`). The slots hold eight sequences' cells; a prompt seen a minute ago,
whose slot has since served others, would be computed again. So when a new prompt
is about to overwrite a slot's cells, the sequence they hold is saved first
(llama.cpp's per-sequence state: the cells' keys and values, about 23 KB a token for
SmolLM2 in f16), and a later prompt that starts with it restores it into its slot
instead: a copy of a megabyte where computing 30 prompt tokens takes ~60 ms on two
cores. The least recently used entries go first once the store passes its budget,
and a new save is written into the buffer of the entry it displaces: fresh memory
costs a page fault per 4 KB on its first write (~90 ms for SmolLM2's 27 MB at 1,170
tokens in this VM, against ~2 ms into pages already touched). A new buffer has room
for a state an eighth larger: saved sequences differ by a few tokens (a user turn, an
answer), and one a token longer than the entry it displaces would otherwise miss that
entry's buffer and pay for fresh pages again (half the saves, 16-21 ms each, in a
trace of the shared-system-prompt workload).

Until the store first fills there is nothing to displace, and each save takes fresh
memory. A buffer is an anonymous map (`mmap`), not a bytearray: a bytearray is zeroed
when made, and that first touch of every page ran with the GIL held, so the event loop
(streaming the running requests' tokens, reading new ones) stopped for it too; a map's
pages fault in as llama.cpp writes the state, with the GIL released. In this VM memory
the guest has not touched lately costs ~10 ms a MB on first touch (250-420 ms for a
30 MB state, traced under GuideLLM's load: 8 such saves in its second wave of
requests), so it showed."""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Sequence

# Where a state is written: an anonymous map (see the module's docstring), or any
# bytearray (the tests' small ones).
Buffer = bytearray | mmap.mmap
# A saved sequence: the bytes llama.cpp wrote, a view of the start of a buffer that
# may be longer (one recycled from an entry that went).
State = Buffer | memoryview
_PAGE = 4096


def _buffer(state: State) -> Buffer:
    """The buffer a state was written into."""
    buffer = state.obj if isinstance(state, memoryview) else state
    assert isinstance(buffer, bytearray | mmap.mmap)
    return buffer


def _held(state: State) -> int:
    """The bytes an entry holds in memory: its whole buffer, not only what was written."""
    return len(_buffer(state))


class PromptStore:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._entries: OrderedDict[tuple[int, ...], State] = OrderedDict()  # oldest use first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens: list[int]) -> bool:
        return tuple(tokens) in self._entries

    def reserve(self, size: int, keep: State | None = None) -> Buffer | None:
        """Make room for a state of `size` bytes, dropping the least recently used
        entries, and hand back the smallest dropped buffer it fits in (None: none did),
        never `keep`'s, which its caller is about to read (it may still be dropped)."""
        spare: Buffer | None = None
        kept = _buffer(keep) if keep is not None else None
        while self._entries and self.used + size > self.budget:
            _, dropped = self._entries.popitem(last=False)
            self.used -= _held(dropped)
            buffer = _buffer(dropped)
            if buffer is not kept and size <= len(buffer) < (len(spare) if spare else 2**63):
                spare = buffer
        return spare

    def put(self, tokens: list[int], state: State) -> None:
        """Keep `state`, the KV of `tokens`, dropping the least recently used beyond the budget."""
        if _held(state) > self.budget:
            return
        key = tuple(tokens)
        old = self._entries.pop(key, None)
        if old is not None:
            self.used -= _held(old)
        self._entries[key] = state
        self.used += _held(state)
        while self.used > self.budget:
            _, dropped = self._entries.popitem(last=False)
            self.used -= _held(dropped)

    def longest(self, prompt: list[int]) -> tuple[int, State] | None:
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


def new_buffer(size: int) -> mmap.mmap:
    """A buffer for a state of `size` bytes, with room for one an eighth larger, in
    whole pages, none of them touched yet."""
    return mmap.mmap(-1, -(-(size + size // 8) // _PAGE) * _PAGE)


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
