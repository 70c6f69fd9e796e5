"""The embedding batcher: requests that arrive while a batch runs share the next one,
in arrival order and within the limits; a big request is split; a failure fails only
the requests in that batch; a cancelled request's inputs are skipped."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from backends.base import BackendError
from backends.embedding import EmbedBatcher, Vectors


class Recorder:
    """A forward pass that records its batches, embeds an input as [first token, length],
    holds the first batch until released, and fails on an input starting with 666."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, batch: list[list[int]]) -> Vectors:
        self.batches.append(batch)
        if len(self.batches) == 1:
            self.entered.set()
            self.release.wait(5)
        if any(t[0] == 666 for t in batch):
            raise RuntimeError("boom")
        return np.array([[t[0], len(t)] for t in batch], dtype=np.float32)


async def _while_first_batch_runs(forward: Recorder, batcher: EmbedBatcher, later: list[list[list[int]]]) -> list[Any]:
    first = asyncio.ensure_future(batcher.submit([[1, 1]]))
    await asyncio.to_thread(forward.entered.wait, 5)
    rest = [asyncio.ensure_future(batcher.submit(inputs)) for inputs in later]
    await asyncio.sleep(0.05)  # every later request is queued before the first batch ends
    forward.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_waiting_requests_share_a_batch_within_the_limits() -> None:
    forward = Recorder()
    batcher = EmbedBatcher("test", forward, max_inputs=4, max_tokens=100)
    batcher.start()
    later = [[[2] * 3], [[3] * 5, [4] * 2], [[5] * 4, [6] * 1, [7] * 9]]
    results = asyncio.run(_while_first_batch_runs(forward, batcher, later))
    batcher.stop()
    # Four inputs a batch: the three later requests' six inputs take two batches, in order.
    assert [[t[0] for t in b] for b in forward.batches] == [[1], [2, 3, 4, 5], [6, 7]]
    assert results[2].tolist() == [[3, 5], [4, 2]]
    assert results[3].tolist() == [[5, 4], [6, 1], [7, 9]]  # split over two batches, rows in order


def test_the_token_limit_closes_a_batch() -> None:
    forward = Recorder()
    batcher = EmbedBatcher("test", forward, max_inputs=64, max_tokens=10)
    batcher.start()
    asyncio.run(_while_first_batch_runs(forward, batcher, [[[2] * 6], [[3] * 4], [[4] * 1]]))
    batcher.stop()
    assert [[t[0] for t in b] for b in forward.batches] == [[1], [2, 3], [4]]


def test_an_input_over_the_limit_is_refused_before_queueing() -> None:
    batcher = EmbedBatcher("test", Recorder(), max_inputs=4, max_tokens=10)
    with pytest.raises(ValueError, match="does not fit"):
        asyncio.run(batcher.submit([[1] * 11]))


def test_a_failure_fails_only_its_batch() -> None:
    forward = Recorder()
    batcher = EmbedBatcher("test", forward, max_inputs=2, max_tokens=100)
    batcher.start()
    results = asyncio.run(_while_first_batch_runs(forward, batcher, [[[666, 1], [2]], [[3]]]))
    batcher.stop()
    assert isinstance(results[1], BackendError) and "boom" in str(results[1])
    assert results[2].tolist() == [[3, 1]]
