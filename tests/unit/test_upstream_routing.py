"""The openai backend's parts that need no server: routing policies, the replica
pool's ejection and DNS discovery (a fake clock and resolver), SSE parsing."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from backends.openai.backend import OpenAIUpstreamConfig, affinity_key
from backends.openai.pool import HealthPolicy, ReplicaPool
from backends.openai.routing import HashRing, Policy, Replica, least_outstanding, pick, prefix_affinity
from backends.openai.sse import DONE, Splitter
from backends.relay import Event, error_status


def replicas(*outstanding: int) -> list[Replica]:
    return [Replica(f"http://r{i}:8000", outstanding=o) for i, o in enumerate(outstanding)]


# -- policies ---------------------------------------------------------------------------------


def test_least_outstanding_picks_the_idlest_and_rotates_ties() -> None:
    rs = replicas(3, 1, 2)
    assert least_outstanding(rs, turn=0) is rs[1]
    idle = replicas(0, 0, 0)
    assert [least_outstanding(idle, t).url for t in range(3)] == [r.url for r in idle]


def test_round_robin_takes_turns() -> None:
    rs = replicas(5, 0, 0)
    ring = HashRing()
    assert [pick(Policy.ROUND_ROBIN, rs, turn=t, ring=ring).url for t in range(4)] == [
        rs[0].url,
        rs[1].url,
        rs[2].url,
        rs[0].url,
    ]


def test_prefix_affinity_is_sticky_and_moves_few_keys_when_a_replica_joins() -> None:
    rs = replicas(0, 0, 0)
    ring = HashRing()
    ring.rebuild([r.url for r in rs])
    keys = [f"system prompt {i}".encode() for i in range(300)]
    before = {k: prefix_affinity(rs, ring, k, 1.25).url for k in keys}
    assert {k: prefix_affinity(rs, ring, k, 1.25).url for k in keys} == before  # the same prefix, the same replica
    assert len(set(before.values())) == 3  # and the keys spread over all of them
    grown = [*rs, Replica("http://r3:8000")]
    ring.rebuild([r.url for r in grown])
    after = {k: prefix_affinity(grown, ring, k, 1.25).url for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "http://r3:8000" for k in moved)  # keys move only to the newcomer
    assert 0.1 < len(moved) / len(keys) < 0.45  # about a quarter, not a reshuffle


def test_prefix_affinity_passes_on_from_an_overloaded_replica() -> None:
    rs = replicas(0, 0)
    ring = HashRing()
    ring.rebuild([r.url for r in rs])
    home = prefix_affinity(rs, ring, b"shared prefix", 1.25)
    home.outstanding = 6  # bound: ceil(1.25 * (6 + 0 + 1) / 2) = 5, and home is past it
    other = prefix_affinity(rs, ring, b"shared prefix", 1.25)
    assert other is not home
    home.outstanding = other.outstanding = 2  # bound: ceil(1.25 * 5 / 2) = 4: the prefix goes home
    assert prefix_affinity(rs, ring, b"shared prefix", 1.25) is home


def test_affinity_key_reads_prompts_and_messages() -> None:
    assert affinity_key({"prompt": "abcdef"}, 3) == b"abc"
    assert affinity_key({"prompt": ["first", "second"]}, 10) == b"first"
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert affinity_key(chat, 100).startswith(b"system\x00Be brief.\x00user")


def test_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="upstreams"):
        OpenAIUpstreamConfig()
    with pytest.raises(ValueError, match="http"):
        OpenAIUpstreamConfig(upstreams=["localhost:8000"])
    with pytest.raises(ValueError, match="routing"):
        OpenAIUpstreamConfig(upstreams=["http://a:1"], routing="random")


# -- the pool ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_eject_for_the_cool_down() -> None:
    clock = Clock()
    pool = ReplicaPool(
        ["http://a:1", "http://b:1"],
        HealthPolicy(interval_s=0, eject_after_failures=2, ejection_s=10),
        clock=clock,
    )
    a, b = pool.replicas
    pool.failed(a)
    pool.succeeded(a)  # a success in between resets the count
    pool.failed(a)
    assert pool.available() == [a, b]
    pool.failed(a)
    assert pool.available() == [b] and a.ejections == 1
    clock.now += 9.9
    assert pool.available() == [b]
    clock.now += 0.2  # no active checks configured: the cool-down alone brings it back
    assert pool.available() == [a, b]


def test_with_active_checks_an_ejected_replica_waits_for_a_passing_probe() -> None:
    clock = Clock()
    pool = ReplicaPool(["http://a:1"], HealthPolicy(interval_s=1, eject_after_failures=1, ejection_s=5), clock=clock)
    (a,) = pool.replicas
    pool.failed(a)
    clock.now += 6
    assert pool.available() == []  # cool-down over, but no probe has passed yet
    a.healthy = True  # what a passing probe sets
    assert pool.available() == [a]


def test_dns_discovery_keeps_known_replicas_and_survives_a_failed_lookup() -> None:
    answers: list[list[str] | OSError] = [["10.0.0.1", "10.0.0.2"], ["10.0.0.2", "10.0.0.3"], OSError("NXDOMAIN")]
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    pool = ReplicaPool(["http://engine.ns.svc:8000"], HealthPolicy(), resolve_dns=True, resolver=resolver)
    asyncio.run(pool.resolve())
    assert [r.url for r in pool.replicas] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    second = pool.replicas[1]
    second.requests = 7
    asyncio.run(pool.resolve())
    assert [r.url for r in pool.replicas] == ["http://10.0.0.2:8000", "http://10.0.0.3:8000"]
    assert pool.replicas[0] is second and second.requests == 7  # state survives a re-resolution
    assert pool.ring.walk(b"x") and set(pool.ring.walk(b"x")) == {r.url for r in pool.replicas}
    asyncio.run(pool.resolve())
    assert len(pool.replicas) == 2  # a failed lookup empties nothing
    assert asked == [("engine.ns.svc", 8000)] * 3


def test_ipv6_addresses_get_brackets() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["::1"]

    pool = ReplicaPool(["http://localhost:9000"], HealthPolicy(), resolve_dns=True, resolver=resolver)
    asyncio.run(pool.resolve())
    assert pool.replicas[0].url == "http://[::1]:9000"


# -- SSE ---------------------------------------------------------------------------------------


def _parse(pieces: list[bytes]) -> list[Event | object]:
    splitter = Splitter()
    return [e for piece in pieces for e in splitter.feed(piece)] + splitter.close()


def test_events_split_anywhere_and_crlf() -> None:
    body = b'data: {"a": 1}\r\n\r\n: keep-alive\r\n\r\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    for cut in range(len(body)):
        parsed = _parse([body[:cut], body[cut:]])
        assert [e.data if isinstance(e, Event) else e for e in parsed] == [{"a": 1}, {"b": 2}, DONE], cut
    first = (_parse([body]))[0]
    assert isinstance(first, Event) and first.raw == b'{"a": 1}'  # forwarded byte for byte


def test_error_events_in_both_spellings() -> None:
    parsed = _parse([b'error: {"message": "slot unavailable", "code": 503}\n\n', b"data: not json\n\n"])
    assert all(isinstance(e, Event) and e.error for e in parsed)
    first, second = parsed
    assert isinstance(first, Event) and first.error is not None and error_status(first.error) == 503
    assert isinstance(second, Event) and second.error is not None and "not a JSON object" in second.error["message"]
    assert error_status({"type": "server_error"}) == 500
    assert error_status({"type": "invalid_request_error", "code": "context_length_exceeded"}) == 400
    assert Counter(error_status({"type": t}) for t in ("rate_limit_error", "service_unavailable")) == {429: 1, 503: 1}
