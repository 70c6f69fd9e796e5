"""The replicas of one upstream model: found (a static list, or every address a DNS
name resolves to, such as a Kubernetes headless Service, re-resolved periodically),
probed (active health checks), and ejected after consecutive failures (passive
checks) for a cool-down, after which a passing probe brings them back."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from backends.openai.routing import HashRing, Replica

log = logging.getLogger("lightgate")

# host, port -> the addresses it resolves to; the event loop's getaddrinfo by default.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _with_host(url: str, address: str) -> str:
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")


@dataclass(slots=True, frozen=True)
class HealthPolicy:
    path: str = "/health"  # GET; any 2xx passes (a Lightgate engine pod answers /health and /ready)
    interval_s: float = 5.0  # 0: no active checks; an ejected replica returns after its cool-down
    timeout_s: float = 2.0
    eject_after_failures: int = 2  # consecutive failed requests
    ejection_s: float = 10.0  # cool-down before an ejected replica may be tried again


class ReplicaPool:
    def __init__(
        self,
        urls: list[str],
        health: HealthPolicy,
        *,
        resolve_dns: bool = False,
        resolve_interval_s: float = 10.0,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configured = [u.rstrip("/") for u in urls]
        self.health = health
        self.resolve_dns = resolve_dns
        self.resolve_interval_s = resolve_interval_s
        self.resolver = resolver
        self.clock = clock
        self.replicas: list[Replica] = [] if resolve_dns else [Replica(u) for u in self.configured]
        self.ring = HashRing()
        self.ring.rebuild([r.url for r in self.replicas])

    def available(self) -> list[Replica]:
        now = self.clock()
        return [r for r in self.replicas if r.available(now)]

    # -- passive checks: every attempt's outcome ------------------------------------------

    def succeeded(self, r: Replica) -> None:
        r.failures = 0

    def failed(self, r: Replica) -> None:
        r.errors += 1
        r.failures += 1
        if r.failures >= self.health.eject_after_failures and r.ejected_until <= self.clock():
            r.ejected_until = self.clock() + self.health.ejection_s
            r.ejections += 1
            r.failures = 0
            # With active checks on, it comes back only once a probe passes again.
            if self.health.interval_s > 0:
                r.healthy = False
            log.warning("upstream %s ejected for %.0fs after consecutive failures", r.url, self.health.ejection_s)

    # -- discovery and active checks --------------------------------------------------------

    async def resolve(self) -> None:
        """Each configured URL whose host resolves to several addresses is several replicas.
        A failed lookup keeps the replicas found before (DNS blips must not empty the pool)."""
        if not self.resolve_dns:
            return
        found: list[str] = []
        for url in self.configured:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                addresses = await self.resolver(parts.hostname or "", port)
            except OSError as exc:
                kept = len(self.replicas)
                log.warning("cannot resolve %s (%s); keeping %d known replicas", parts.hostname, exc, kept)
                return
            found += [_with_host(url, a) for a in addresses]
        known = {r.url: r for r in self.replicas}
        if set(found) != set(known):
            log.info("upstream replicas now: %s", ", ".join(found) or "none")
            self.replicas = [known.get(u) or Replica(u) for u in found]
            self.ring.rebuild(found)

    async def probe(self, client: httpx.AsyncClient) -> None:
        """One active check of every replica, concurrently."""
        await asyncio.gather(*(self._probe_one(client, r) for r in self.replicas))

    async def _probe_one(self, client: httpx.AsyncClient, r: Replica) -> None:
        try:
            response = await client.get(r.url + self.health.path, timeout=self.health.timeout_s)
            ok = response.is_success
        except httpx.HTTPError:
            ok = False
        if ok != r.healthy:
            log.info("upstream %s is %s", r.url, "healthy" if ok else "failing its health check")
        r.healthy = ok

    async def run(self, client: httpx.AsyncClient) -> None:
        """Re-resolve and probe, each on its own interval, forever (a task the backend
        cancels at stop)."""
        periods = [t for t in (self.health.interval_s, self.resolve_interval_s if self.resolve_dns else 0.0) if t > 0]
        if not periods:
            return
        last_resolve = last_probe = self.clock()
        while True:
            await asyncio.sleep(min(periods))
            if self.resolve_dns and self.clock() - last_resolve >= self.resolve_interval_s - 0.01:
                last_resolve = self.clock()
                await self.resolve()
            if self.health.interval_s > 0 and self.clock() - last_probe >= self.health.interval_s - 0.01:
                last_probe = self.clock()
                await self.probe(client)
