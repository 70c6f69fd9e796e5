"""The host-memory store of prompts' KV: longest shared prefix, least recently used
out first under a byte budget, and the prefix function against a plain loop."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from backends.llamacpp.prompt_store import PromptStore, common_prefix, new_buffer


def test_the_entry_with_the_longest_shared_prefix_is_found() -> None:
    store = PromptStore(budget_bytes=100)
    store.put([1, 2, 3, 4], bytearray(b"abcd"))
    store.put([1, 2, 9], bytearray(b"xyz"))
    assert store.longest([1, 2, 3, 7, 8]) == (3, bytearray(b"abcd"))
    assert store.longest([1, 2, 9, 9]) == (3, bytearray(b"xyz"))
    assert store.longest([5, 6]) is None


def test_the_least_recently_used_go_first_past_the_budget() -> None:
    store = PromptStore(budget_bytes=10)
    store.put([1], bytearray(b"aaaa"))
    store.put([2], bytearray(b"bbbb"))
    assert store.longest([1, 0]) is not None  # [1] is now the most recently used
    store.put([3], bytearray(b"cccc"))  # 12 bytes: [2] goes
    assert [1] in store and [3] in store and [2] not in store
    assert store.used == 8
    store.put([4], bytearray(b"x" * 11))  # larger than the whole budget: not kept, nothing dropped
    assert len(store) == 2 and [4] not in store
    store.put([1], bytearray(b"a"))  # replaced, not counted twice
    assert store.used == 5


def test_common_prefix_agrees_with_a_plain_loop() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(10))]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        assert common_prefix(a, b) == n == common_prefix(tuple(a), tuple(b))


def test_a_save_reuses_the_buffer_of_the_entry_it_displaces() -> None:
    """Room for a new state is made before it is written, and the smallest dropped
    buffer it fits in comes back for it to be written into (its pages are touched
    already); the entry then holds, and is charged for, that whole buffer."""
    store = PromptStore(budget_bytes=20)
    big, small = bytearray(b"b" * 8), bytearray(b"s" * 6)
    store.put([1], memoryview(big)[:7])
    store.put([2], small)
    store.put([3], bytearray(b"c" * 4))
    assert store.used == 18 and store.reserve(2) is None  # room already: nothing dropped
    spare = store.reserve(5)  # 23 > 20: [1] goes, then 15 + 5 fits
    assert spare is big and [1] not in store and store.used == 10
    spare[:5] = b"new!!"
    store.put([4], memoryview(spare)[:5])
    assert store.used == 18  # the whole 8-byte buffer, not the 5 bytes written
    found = store.longest([4, 0])
    assert found is not None and found[0] == 1 and bytes(found[1]) == b"new!!"
    assert store.reserve(30) is None and len(store) == 0 and store.used == 0  # too large: everything went, none fits


def test_a_buffer_about_to_be_read_is_never_handed_out() -> None:
    store = PromptStore(budget_bytes=10)
    store.put([1], bytearray(8))
    found = store.longest([1, 2])
    assert found is not None
    assert store.reserve(6, keep=found[1]) is None  # it fits, but the caller restores from it next
    assert [1] not in store and store.used == 0  # dropped all the same: the old behaviour


def test_a_new_buffer_takes_the_next_save_a_few_tokens_longer() -> None:
    """Saved sequences differ by a few tokens: a new buffer has an eighth to spare, so
    the save that displaces its entry, a little longer, is written into it, not into
    fresh pages."""
    size = 23 * 2**20  # SmolLM2's ~1,000-token sequence
    buffer = new_buffer(size)
    assert size + size // 8 <= len(buffer) < size + size // 8 + 4096 and len(buffer) % 4096 == 0
    store = PromptStore(budget_bytes=len(buffer) + 100)
    store.put([1], memoryview(buffer)[:size])
    assert store.reserve(size + 100 * 23 * 1024) is buffer  # 100 tokens longer: still fits
    store.put([2], buffer)
    assert store.reserve(size * 2) is None and len(store) == 0  # twice as long: dropped, but no fit


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_a_new_buffer_leaves_its_pages_to_the_save_that_writes_them() -> None:
    """A bytearray is zeroed when made, every page touched with the GIL held (the event
    loop stopped for it); a new buffer is a map whose pages fault in only as llama.cpp
    writes the state, with the GIL released."""
    size = 64 * 2**20
    before = _resident_bytes()
    buffer = new_buffer(size)
    assert len(buffer) >= size and _resident_bytes() - before < 4 * 2**20
    buffer[: 2**20] = b"x" * 2**20  # written: now resident
    assert _resident_bytes() - before >= 2**20
