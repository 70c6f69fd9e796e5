"""The per-minute window: never more than the limit in any span, refunds, and the
times it tells a client (Retry-After, x-ratelimit-reset-*)."""

from __future__ import annotations

import math

import pytest

from gateway.ratelimit import Window


def test_never_more_than_the_limit_in_any_span() -> None:
    w = Window(limit=10, span_s=60)
    taken = [t for t in range(0, 120) if w.take(1, now=float(t)) is not None]
    # Ten at once, then none until the first of them is a span old, then ten more.
    assert taken == list(range(10)) + list(range(60, 70))
    for start in range(0, 60):
        assert sum(1 for t in taken if start <= t < start + 60) <= 10


def test_refunds_and_charges_settle_the_entry() -> None:
    w = Window(limit=100, span_s=60)
    entry = w.take(80, now=0.0)  # prompt + max_tokens reserved
    assert entry is not None and w.remaining(now=1.0) == 20
    w.settle(entry, 30)  # only 30 used: 50 come back
    assert w.remaining(now=1.0) == 70
    w.settle(entry, 40)
    assert w.remaining(now=1.0) == 60
    assert w.remaining(now=60.0) == 100  # expired: settling it now changes nothing
    w.settle(entry, 10)
    assert w.remaining(now=60.0) == 100


def test_wait_for_is_when_enough_has_expired() -> None:
    w = Window(limit=10, span_s=60)
    w.take(4, now=0.0)
    w.take(6, now=5.0)
    assert w.wait_for(1, now=10.0) == pytest.approx(50.0)  # the first entry frees 4 at t=60
    assert w.wait_for(5, now=10.0) == pytest.approx(55.0)  # 5 needs the second one too
    assert w.wait_for(0, now=10.0) == 0.0
    assert math.isinf(w.wait_for(11, now=10.0))  # never fits
    assert w.reset_after(now=10.0) == pytest.approx(55.0)
    assert w.take(1, now=10.0) is None
