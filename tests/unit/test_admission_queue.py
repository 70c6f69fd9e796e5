"""The admission queue: slots handed straight to the next waiter, fair across keys,
in priority order, and refusals at arrival for a wait past the deadline."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import AdmissionQueue, Flow, QueueFull


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


def serve_order(q: AdmissionQueue, arrivals: list[Flow]) -> list[str]:
    """Hold the one slot while `arrivals` queue in this order, then free it step by
    step: whose request each slot went to."""

    async def run() -> list[str]:
        order: list[str] = []

        async def user(flow: Flow) -> None:
            await q.acquire(flow)
            order.append(flow.who)
            await asyncio.sleep(0)
            q.release()

        await q.acquire()
        tasks = []
        for flow in arrivals:
            tasks.append(asyncio.create_task(user(flow)))
            await asyncio.sleep(0)  # each one queued before the next arrives
        q.release()
        await asyncio.gather(*tasks)
        return order

    return asyncio.run(run())


def test_a_flooding_key_does_not_starve_a_light_one() -> None:
    heavy, light = Flow("heavy"), Flow("light")
    arrivals = [heavy] * 6 + [light] * 2
    # Fair: the light key's first request goes second (its tag equals heavy's first), then
    # they alternate while both have requests waiting.
    fair = serve_order(AdmissionQueue(1, 10), arrivals)
    assert fair[:4] == ["heavy", "light", "heavy", "light"]
    fifo = serve_order(AdmissionQueue(1, 10, fair=False), arrivals)
    assert fifo == ["heavy"] * 6 + ["light"] * 2


def test_weights_share_the_slots_in_proportion() -> None:
    big, small = Flow("big", weight=3.0), Flow("small", weight=1.0)
    order = serve_order(AdmissionQueue(1, 20), [big] * 8 + [small] * 8)
    first_eight = order[:8]
    assert first_eight.count("big") == 6 and first_eight.count("small") == 2


def test_an_interactive_request_goes_before_batch_ones() -> None:
    batch, interactive = Flow("b", rank=2), Flow("i", rank=0)
    order = serve_order(AdmissionQueue(1, 10), [batch] * 4 + [interactive])
    assert order[0] == "i"


def test_the_wait_estimate_follows_the_measured_hold_time() -> None:
    async def run() -> None:
        q = AdmissionQueue(max_running=2, max_queue=100, max_wait_s=1.0)
        assert q.estimate() == 0.0  # a free slot
        await q.acquire()
        await q.acquire()
        assert q.estimate() == 0.0  # full, but nothing measured yet: no guess
        q.release(held_s=0.4)
        await q.acquire()
        # Two slots held 0.4 s each: one frees every 0.2 s, a newcomer waits its turn.
        assert q.estimate() == pytest.approx(0.2)
        waiters = [asyncio.create_task(q.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        assert q.estimate() == pytest.approx(0.8)  # three ahead: the fourth slot to free
        # Past the deadline: refused at arrival, saying when it would fit.
        q.check()  # 0.8 s is within 1 s: it may queue
        more = [asyncio.create_task(q.acquire()) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            q.check()  # five ahead: 1.2 s
        assert refused.value.code == "queue_wait"
        assert refused.value.retry_after_s == pytest.approx(0.2)  # when it would be within 1 s
        with pytest.raises(QueueFull):
            q.check(max_wait_s=0.5)  # a client that asks for less is refused sooner
        for _ in range(7):
            q.release(held_s=0.4)
            await asyncio.sleep(0)
        await asyncio.gather(*waiters, *more)
        assert q.running == 0 and q.waiting == 0

    asyncio.run(run())


def test_a_light_flow_sees_a_short_wait_behind_a_heavy_queue() -> None:
    async def run() -> None:
        q = AdmissionQueue(max_running=1, max_queue=100, max_wait_s=1.0)
        await q.acquire()
        q.release(held_s=0.3)
        await q.acquire()
        heavy = [asyncio.create_task(q.acquire(Flow("heavy"))) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            q.check(Flow("heavy"))  # behind its own three: 1.2 s
        # A newcomer from another key stands beside heavy's first request, not behind all.
        assert q.estimate(Flow("light")) == pytest.approx(0.6)
        for task in heavy:
            task.cancel()
        await asyncio.gather(*heavy, return_exceptions=True)
        assert q.waiting == 0

    asyncio.run(run())


def test_a_reserved_slot_waits_for_interactive_work() -> None:
    async def run() -> None:
        q = AdmissionQueue(max_running=3, max_queue=10, reserve=1)
        batch, interactive = Flow("b", rank=2), Flow("i", rank=0)
        await q.acquire(batch)
        await q.acquire(batch)
        queued = asyncio.create_task(q.acquire(batch))  # the third slot is the reserve
        await asyncio.sleep(0)
        assert q.running == 2 and q.waiting == 1
        await q.acquire(interactive)  # at once, past the queued batch request
        assert q.running == 3
        q.release()  # the interactive one ends: its slot stays in reserve
        await asyncio.sleep(0)
        assert not queued.done() and q.running == 2
        q.release()  # a batch one ends: the queued batch request takes its slot
        await queued
        assert q.running == 2 and q.waiting == 0

    asyncio.run(run())
