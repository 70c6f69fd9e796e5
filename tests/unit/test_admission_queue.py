"""The admission queue: a bounded FIFO that hands slots straight to the oldest waiter."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import AdmissionQueue, QueueFull


def test_slots_go_to_waiters_in_arrival_order() -> None:
    async def run() -> list[int]:
        q = AdmissionQueue(max_running=1, max_queue=5)
        order: list[int] = []

        async def user(i: int) -> None:
            await q.acquire()
            order.append(i)
            await asyncio.sleep(0)
            q.release()

        await q.acquire()  # hold the slot while everyone queues
        tasks = [asyncio.create_task(user(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert q.waiting == 5
        q.release()
        await asyncio.gather(*tasks)
        assert q.running == 0 and q.waiting == 0
        return order

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]


def test_a_full_queue_refuses_at_once() -> None:
    async def run() -> None:
        q = AdmissionQueue(max_running=1, max_queue=1)
        await q.acquire()
        waiter = asyncio.create_task(q.acquire())
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await q.acquire()
        q.release()
        await waiter
        assert q.running == 1
        q.release()
        assert q.running == 0

    asyncio.run(run())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def run() -> None:
        q = AdmissionQueue(max_running=1, max_queue=2)
        await q.acquire()
        waiter = asyncio.create_task(q.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert q.waiting == 0
        q.release()
        assert q.running == 0

    asyncio.run(run())


def test_a_slot_granted_to_a_cancelled_waiter_passes_on() -> None:
    async def run() -> None:
        q = AdmissionQueue(max_running=1, max_queue=2)
        await q.acquire()
        first = asyncio.create_task(q.acquire())
        second = asyncio.create_task(q.acquire())
        await asyncio.sleep(0)
        q.release()  # granted to `first`...
        first.cancel()  # ...which leaves before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
        assert q.running == 1 and q.waiting == 0

    asyncio.run(run())
