"""Admission per model: at most `max_running` requests inside the engine, the rest
waiting for a slot, and a refusal at arrival for anyone who would wait too long.

The queue is bounded by time, not only by count: the model's service rate is measured
(how long a request holds its slot, averaged), so the wait of a newcomer is known when
it arrives: (requests served before it + 1) x hold time / slots. A request whose wait
would pass its deadline (`max_queue_wait_s`) is refused there and then, with the time
after which it would fit, never after it has waited.

Who goes next: priority classes first (interactive before standard before batch), then,
within a class, start-time fair queuing across flows (one flow per API key): each
request is tagged with the virtual time at which its flow's previous request would
have been served, advanced by 1 / weight, and the smallest tag goes first. A key that
floods the queue only pushes its own tags out; a key that sends one request at a time
finds its tag at the front. With `fair` off it is one FIFO, as before.

Being first in line still means waiting for a slot to free, and requests of one size
started together free their slots together, once per generation. `reserve` slots are
kept for the interactive class: other classes fill at most `max_running - reserve`,
so an interactive request finds a slot at once (at that share of throughput)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from dataclasses import dataclass, field


class QueueFull(Exception):
    """A refusal at arrival: the wait would pass the deadline, or the queue is full."""

    def __init__(self, message: str, retry_after_s: float, code: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.code = code


def retry_after(seconds: float) -> int:
    """Retry-After is whole seconds; never 0, which would invite an instant retry."""
    return max(1, math.ceil(seconds))


@dataclass(frozen=True, slots=True)
class Flow:
    """Whose request it is: the key's name, its priority rank (0 first) and its weight."""

    who: str = ""
    rank: int = 1
    weight: float = 1.0


ANONYMOUS = Flow()


@dataclass(order=True, slots=True)
class _Waiter:
    rank: int
    tag: float
    seq: int
    turn: asyncio.Future[None] = field(compare=False)
    gone: bool = field(default=False, compare=False)


class AdmissionQueue:
    SMOOTHING = 0.2  # weight of the newest hold time in the running average

    def __init__(
        self, max_running: int, max_queue: int, max_wait_s: float | None = None, fair: bool = True, reserve: int = 0
    ) -> None:
        if max_running < 1 or max_queue < 0 or reserve < 0:
            raise ValueError("max_running must be >= 1, max_queue and reserve >= 0")
        self.max_running = max_running
        self.reserve = reserve
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s  # None: bounded by count alone
        self.fair = fair
        self.running = 0
        self.hold_s: float | None = None  # how long a request holds its slot, on average
        self._heap: list[_Waiter] = []
        self._live = 0  # waiters still in the heap (a cancelled one stays there, marked gone)
        self._seq = itertools.count()
        self._virtual: dict[int, float] = {}  # per rank: the tag last served
        self._finish: dict[tuple[int, str], float] = {}  # per (rank, flow): its next start tag

    @property
    def waiting(self) -> int:
        return self._live

    def _free_for(self, flow: Flow) -> bool:
        """A slot this request may take now, with nobody waiting who goes before it."""
        if self.running >= self._slots(flow.rank):
            return False
        if not self.fair:
            return not self._live
        return not any(not w.gone and w.rank <= flow.rank for w in self._heap) if self._live else True

    def _slots(self, rank: int) -> int:
        """The slots a request of this rank may fill (all of them for interactive, rank 0)."""
        return self.max_running if rank == 0 or not self.fair else max(1, self.max_running - self.reserve)

    def _key(self, flow: Flow) -> tuple[int, float]:
        """Where a newcomer of `flow` would stand under fair queuing: (rank, start tag)."""
        start = max(self._virtual.get(flow.rank, 0.0), self._finish.get((flow.rank, flow.who), 0.0))
        return flow.rank, start

    def estimate(self, flow: Flow = ANONYMOUS) -> float:
        """Seconds a request of `flow` arriving now would wait for a slot (0 if one is
        free; 0 before the first request has been measured)."""
        slots = self._slots(flow.rank)
        if self._free_for(flow):
            return 0.0
        if self.hold_s is None:
            return 0.0
        if self.fair:
            rank, start = self._key(flow)
            ahead = sum(1 for w in self._heap if not w.gone and (w.rank, w.tag) <= (rank, start))
        else:
            ahead = self._live
        return (ahead + 1) * self.hold_s / slots

    def check(self, flow: Flow = ANONYMOUS, max_wait_s: float | None = None) -> None:
        """Refuse (QueueFull) a request that would wait past its deadline or find the
        queue full; say when it would fit."""
        per_slot = (self.hold_s or 1.0) / self.max_running
        if self._live >= self.max_queue and not self._free_for(flow):
            over = self._live - self.max_queue + 1
            raise QueueFull(
                f"{self.running} requests running and {self._live} waiting (the queue's bound)",
                over * per_slot,
                "queue_full",
            )
        deadline = self.max_wait_s if max_wait_s is None else min(max_wait_s, self.max_wait_s or max_wait_s)
        if deadline is None:
            return
        wait = self.estimate(flow)
        if wait > deadline:
            raise QueueFull(
                f"the wait for a slot would be about {wait:.1f}s, past the {deadline:g}s this request may wait",
                wait - deadline,
                "queue_wait",
            )

    async def acquire(self, flow: Flow = ANONYMOUS, max_wait_s: float | None = None) -> None:
        self.check(flow, max_wait_s)
        if self._free_for(flow):
            self.running += 1
            return
        rank, tag = self._key(flow) if self.fair else (0, 0.0)
        if self.fair:
            self._finish[(flow.rank, flow.who)] = tag + 1.0 / flow.weight
        waiter = _Waiter(rank, tag, next(self._seq), asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, waiter)
        self._live += 1
        try:
            await waiter.turn
        except asyncio.CancelledError:
            if waiter.turn.done() and not waiter.turn.cancelled():
                self.release()  # the slot reached us as we left: pass it on
            elif not waiter.gone:
                waiter.gone = True  # left in the heap, skipped when it comes up
                self._live -= 1
            raise

    def release(self, held_s: float | None = None) -> None:
        if held_s is not None:
            s = self.SMOOTHING
            self.hold_s = held_s if self.hold_s is None else (1 - s) * self.hold_s + s * held_s
        # The slot goes straight to the next waiter, so nobody can overtake the queue;
        # unless the next is not interactive and the rest of the slots are the reserve.
        while self._heap:
            waiter = self._heap[0]
            if waiter.gone or waiter.turn.done():
                heapq.heappop(self._heap)
                continue
            if self.running - 1 >= self._slots(waiter.rank):
                break  # kept free for an interactive request
            heapq.heappop(self._heap)
            waiter.gone = True
            self._live -= 1
            self._virtual[waiter.rank] = max(self._virtual.get(waiter.rank, 0.0), waiter.tag)
            waiter.turn.set_result(None)
            return
        self.running -= 1
        if not self._live:
            # Nobody waits: the virtual clocks start again, and no flow keeps old credit or debt.
            self._heap.clear()
            self._virtual.clear()
            self._finish.clear()
