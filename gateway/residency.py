"""Which models are in memory, under the memory budget (llama-swap's and Ollama's
job, inside the gateway): a request for an unloaded model loads it, the least
recently used idle models are evicted when it would not fit, idle models unload
after `idle_unload_s`, and a model with requests in flight or queued is never
touched. Only models whose engine runs in a worker process (`worker: true`) come
and go: unloading one ends its process, which gives its memory back for certain.

A model's footprint is the running memory (peak RSS) its worker reached the last
time it ran; before its first run, its engine's estimate from the weights and the
options (weights as held, KV cells, buffers, libraries), or, for an engine without
one, from the weight files alone."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from backends.base import Supervised
from compressed_models import catalog
from gateway.errors import OpenAIError
from gateway.router import Deployment, Router, State

log = logging.getLogger("lightgate")

_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}
_UNITS |= {"t": 2**40, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # Kubernetes' quantities (the Helm chart's)
# Before a model whose engine cannot estimate itself has run: its weights, a fifth
# more (KV cache, buffers), and what a worker process holds before any model.
ESTIMATE_FACTOR, WORKER_BASE_BYTES = 1.2, 160 * 2**20
THRASH_WINDOW_S = 60.0  # a model loaded again this soon after its eviction was thrashed
IDLE_CHECK_S = 1.0


def parse_bytes(value: int | str) -> int:
    """`8GiB`, `512 MiB`, `1536Mi`, `2G` (binary), `4GB` (decimal), or a number of bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (say 8GiB, 512MiB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def managed(d: Deployment) -> bool:
    """Whether the budget may load and unload this model (its engine is a worker)."""
    return isinstance(d.backend, Supervised)


def estimate_bytes(d: Deployment) -> int:
    if isinstance(d.backend, Supervised) and (own := d.backend.estimate_bytes()) is not None:
        return own
    path = Path(d.backend.path) if isinstance(d.backend, Supervised) and d.backend.path else None
    weights = 0
    if path is not None and path.is_file():
        weights = path.stat().st_size
    elif path is not None and path.is_dir():  # a Hugging Face folder: every file in it
        weights = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return int(weights * ESTIMATE_FACTOR) + WORKER_BASE_BYTES


def footprint(d: Deployment) -> int:
    return d.footprint_bytes if d.footprint_bytes is not None else estimate_bytes(d)


def idle(d: Deployment) -> bool:
    return d.active == 0 and d.admission.running == 0 and d.admission.waiting == 0


class Residency:
    def __init__(self, router: Router, budget_bytes: int | None) -> None:
        self.router = router
        self.budget = budget_bytes
        self._lock = asyncio.Lock()  # every load and unload, one at a time: the sums stay true
        self._check()

    def _check(self) -> None:
        """At start: a model that cannot fit even alone, or startup models that cannot
        fit together, is a configuration error."""
        if self.budget is None:
            return
        ours = [d for d in self.router.deployments if managed(d)]
        for d in ours:
            if footprint(d) > self.budget:
                raise ValueError(
                    f"model {d.name} needs about {footprint(d) / 2**20:.0f} MiB, "
                    f"more than the memory_budget of {self.budget / 2**20:.0f} MiB by itself"
                )
        at_start = [d for d in ours if d.config.load != "on_demand"]
        need = sum(footprint(d) for d in at_start)
        if need > self.budget:
            names = ", ".join(d.name for d in at_start)
            raise ValueError(
                f"the models loaded at start ({names}) need about {need / 2**20:.0f} MiB together, more than "
                f"the memory_budget of {self.budget / 2**20:.0f} MiB: make some `load: on_demand`"
            )

    def used(self) -> int:
        """The footprint of the managed models that hold memory now."""
        holding = (State.READY, State.LOADING, State.RESTARTING, State.DRAINING)
        return sum(footprint(d) for d in self.router.deployments if managed(d) and d.state in holding)

    @contextmanager
    def using(self, d: Deployment) -> Iterator[None]:
        """A request for `d` from the front door to its last byte: `d` is not evicted meanwhile."""
        d.active += 1
        try:
            yield
        finally:
            d.active -= 1
            d.last_used = time.monotonic()

    async def ensure(self, d: Deployment) -> None:
        """Load `d` if it is unloaded (the request waits), making room first."""
        d.last_used = time.monotonic()
        if d.state is not State.UNLOADED:
            return
        if isinstance(d.backend, Supervised) and d.backend.unfetched:
            await self._fetch(d, d.backend)
        async with self._lock:
            if d.state is not State.UNLOADED:
                return  # another request loaded it while this one waited
            await self._make_room(d)
            await self.load(d)

    async def _fetch(self, d: Deployment, backend: Supervised) -> None:
        """A `fetch: on_demand` model's weights, by its first request (others wait for it)."""
        async with d.fetching:
            if not backend.unfetched or d.config.variant is None:
                return
            variant = d.config.variant
            log.info("model %s: fetching %s", d.name, variant)
            began = time.perf_counter()
            try:
                path = await asyncio.to_thread(catalog.fetch, variant, lambda r: log.info("pip install %s", r))
            except catalog.VariantNotFound as exc:
                message = f"the model {d.name!r} could not be fetched: {exc}"
                raise OpenAIError(503, message, code="model_fetch_failed") from exc
            backend.fetched(str(path))
            d.reason = None
            log.info("model %s: %s fetched in %.1fs", d.name, variant, time.perf_counter() - began)

    async def _make_room(self, d: Deployment) -> None:
        if self.budget is None:
            return
        need = footprint(d)
        if need > self.budget:  # known only now for a model fetched on demand
            raise OpenAIError(
                503,
                f"the model {d.name!r} needs about {need / 2**20:.0f} MiB, more than the memory_budget by itself",
                code="memory_budget",
            )
        deadline = time.monotonic() + (d.config.max_queue_wait_s or 30.0)
        while self.used() + need > self.budget:
            victim = self._victim(exclude=d)
            if victim is not None:
                await self._unload(victim, "evicted", by=d)
                continue
            if time.monotonic() > deadline:  # every model in the way is busy: never fail theirs
                busy = ", ".join(m.name for m in self.router.deployments if managed(m) and m.started)
                raise OpenAIError(
                    503,
                    f"the model {d.name!r} does not fit in the memory budget now: the models loaded ({busy}) "
                    "are busy or within their min_resident_s; retry after the Retry-After header's seconds",
                    code="memory_budget",
                    headers={"Retry-After": "5"},
                )
            await asyncio.sleep(0.05)

    def _victim(self, exclude: Deployment) -> Deployment | None:
        """The least recently used model that may go: loaded, idle, not pinned, and
        resident for at least its min_resident_s (so two models cannot thrash faster)."""
        now = time.monotonic()
        candidates = [
            m
            for m in self.router.deployments
            if managed(m)
            and m is not exclude
            and m.state is State.READY
            and m.config.load != "pinned"
            and idle(m)
            and now - m.loaded_at >= m.config.min_resident_s
        ]
        return min(candidates, key=lambda m: m.last_used, default=None)

    async def load(self, d: Deployment) -> None:
        """Start `d`'s worker (the caller holds the lock, or it is an admin's load)."""
        d.move(State.LOADING)
        began = time.perf_counter()
        try:
            await d.backend.start()
        except Exception as exc:
            d.move(State.UNLOADED, f"could not load: {exc}")
            raise OpenAIError(503, f"the model {d.name!r} could not load: {exc}", code="model_load_failed") from exc
        d.admission.max_running = d.config.max_running or d.backend.stats().max_running
        d.loaded(time.perf_counter() - began)
        log.info("model %s loaded in %.2fs (%.0f MiB budgeted)", d.name, d.last_load_s, footprint(d) / 2**20)
        if d.evicted_at is not None and time.monotonic() - d.evicted_at < THRASH_WINDOW_S:
            d.thrash += 1
            log.warning(
                "model %s is loading again %.0fs after %s evicted it: the two keep evicting each other; "
                "raise memory_budget, pin one, or raise min_resident_s",
                d.name,
                time.monotonic() - d.evicted_at,
                d.evicted_by,
            )

    async def _unload(self, d: Deployment, reason: str, by: Deployment | None = None) -> None:
        measured = d.backend.stats().running_memory_bytes
        if measured:
            d.footprint_bytes = measured  # what it really took: the next decision uses it
        d.move(State.UNLOADED)
        d.unloads[reason] = d.unloads.get(reason, 0) + 1
        await d.backend.stop()
        if by is not None:
            d.evicted_at, d.evicted_by = time.monotonic(), by.name
            log.info("model %s evicted to make room for %s", d.name, by.name)
        else:
            log.info("model %s unloaded (%s)", d.name, reason)

    async def unload(self, d: Deployment, reason: str) -> bool:
        """Unload `d` now if it is loaded and idle; False when it is busy."""
        async with self._lock:
            if d.state is not State.READY:
                return d.state is State.UNLOADED
            if not idle(d):
                return False
            await self._unload(d, reason)
            return True

    async def run(self) -> None:
        """Unload models idle for longer than their idle_unload_s."""
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            now = time.monotonic()
            for d in self.router.deployments:
                limit = d.config.idle_unload_s
                if (
                    limit is not None
                    and managed(d)
                    and d.state is State.READY
                    and d.config.load != "pinned"
                    and idle(d)
                    and now - d.last_used > limit
                    and now - d.loaded_at >= d.config.min_resident_s
                ):
                    with suppress(Exception):
                        await self.unload(d, "idle")
