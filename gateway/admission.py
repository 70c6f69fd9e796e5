"""Admission per model: at most `max_running` requests inside the engine, up to
`max_queue` more waiting in arrival order, and a 429 for anyone past that."""

from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(Exception):
    pass


class AdmissionQueue:
    def __init__(self, max_running: int, max_queue: int) -> None:
        if max_running < 1 or max_queue < 0:
            raise ValueError("max_running must be >= 1 and max_queue >= 0")
        self.max_running = max_running
        self.max_queue = max_queue
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(f"{self.running} requests running and {len(self._waiters)} waiting")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # the slot reached us as we left: pass it on
            else:
                self._waiters.remove(turn)
            raise

    def release(self) -> None:
        # The slot goes straight to the oldest waiter, so nobody can overtake the queue.
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1
