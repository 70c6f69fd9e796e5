"""Which replica serves the next request. Three policies, each a pure function of the
replicas' state, so they are tested with hand-checkable numbers:

- least outstanding (the default): the replica with the fewest requests in flight;
  ties go round the list, so an idle pool still spreads.
- round robin: the next available replica in turn.
- prefix affinity: a consistent hash of the prompt's beginning, so requests that
  share a prefix (a system prompt, a few-shot block) reach the replica whose prefix
  cache holds it; with bounded loads (Mirrokni et al., 2018) a replica already
  carrying more than `load_factor` times the mean passes the request on along the ring."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Policy(StrEnum):
    LEAST_OUTSTANDING = "least_outstanding"
    ROUND_ROBIN = "round_robin"
    PREFIX_AFFINITY = "prefix_affinity"


@dataclass(eq=False, slots=True)
class Replica:
    """One upstream server and what the gateway knows of it."""

    url: str  # base URL, no trailing slash: http://10.0.0.7:8000
    outstanding: int = 0  # requests in flight through this gateway
    healthy: bool = True  # the last active health check passed (or none has run)
    ejected_until: float = 0.0  # passive ejection: not routed to before this (monotonic clock)
    failures: int = 0  # consecutive failed requests
    requests: int = 0  # attempts sent, since start
    errors: int = 0  # attempts that failed (connect, 5xx, broken stream, timeout)
    ejections: int = 0

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


def _hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


@dataclass(slots=True)
class HashRing:
    """Consistent hashing with virtual nodes: adding or removing a replica moves only
    the keys that land on its points, so the other replicas' caches stay warm."""

    points_per_replica: int = 64
    _points: list[int] = field(default_factory=list)
    _owners: list[str] = field(default_factory=list)

    def rebuild(self, urls: Sequence[str]) -> None:
        ring = sorted((_hash(f"{url}#{i}".encode()), url) for url in urls for i in range(self.points_per_replica))
        self._points = [p for p, _ in ring]
        self._owners = [u for _, u in ring]

    def walk(self, key: bytes) -> list[str]:
        """Every replica once, in ring order from the key's point."""
        if not self._points:
            return []
        start = bisect.bisect(self._points, _hash(key))
        seen: dict[str, None] = {}
        n = len(self._owners)
        for i in range(n):
            seen.setdefault(self._owners[(start + i) % n])
        return list(seen)


def least_outstanding(candidates: Sequence[Replica], turn: int) -> Replica:
    n = len(candidates)
    best = candidates[turn % n]
    for i in range(1, n):
        r = candidates[(turn + i) % n]
        if r.outstanding < best.outstanding:
            best = r
    return best


def round_robin(candidates: Sequence[Replica], turn: int) -> Replica:
    return candidates[turn % len(candidates)]


def prefix_affinity(candidates: Sequence[Replica], ring: HashRing, key: bytes, load_factor: float) -> Replica:
    by_url = {r.url: r for r in candidates}
    # The request itself counts, so a lone request on an idle pool may always go home.
    bound = math.ceil(load_factor * (sum(r.outstanding for r in candidates) + 1) / len(candidates))
    for url in ring.walk(key):
        r = by_url.get(url)
        if r is not None and r.outstanding < bound:
            return r
    # The least loaded replica is always under the bound; this is one not yet on the ring.
    return least_outstanding(candidates, 0)


def pick(
    policy: Policy,
    candidates: Sequence[Replica],
    *,
    turn: int,
    ring: HashRing,
    key: bytes = b"",
    load_factor: float = 1.25,
) -> Replica:
    """The replica for one attempt, from a non-empty list of available replicas."""
    if policy is Policy.ROUND_ROBIN:
        return round_robin(candidates, turn)
    if policy is Policy.PREFIX_AFFINITY:
        return prefix_affinity(candidates, ring, key, load_factor)
    return least_outstanding(candidates, turn)
