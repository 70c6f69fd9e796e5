"""The host-memory store of prompts' KV: longest shared prefix, least recently used
out first under a byte budget, and the prefix function against a plain loop."""

from __future__ import annotations

import random

from backends.llamacpp.prompt_store import PromptStore, common_prefix


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
