"""Which models are in memory, under the memory budget (llama-swap's and Ollama's
job, inside the gateway): a request for an unloaded model loads it, the least
recently used idle models are evicted when it would not fit, idle models unload
after `idle_unload_s`, and a model with requests in flight or queued is never
touched. Only models whose engine runs in a worker process (`worker: true`) come
and go: unloading one ends its process, which gives its memory back for certain.

A model's footprint is what its worker reached the last time it ran, in host memory
(its peak RSS) and on each GPU (NVML's count for its process, sampled each second),
kept across gateway restarts (gateway/footprints.py); before its first run, its
engine's estimate from the weights and the options (weights as held, KV cells,
buffers, libraries), or, for an engine without one, from the weight files alone.
`memory_budget` bounds the host memory of the models together, `gpu_memory_budget`
each GPU's."""

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
from gateway.footprints import Footprint, FootprintStore
from gateway.gpu import GpuCollector
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
HOST = -1  # the host's budget, beside GPUs named by their index
Budget = int  # HOST, or a GPU's index


def parse_bytes(value: int | str) -> int:
    """`8GiB`, `512 MiB`, `1536Mi`, `2G` (binary), `4GB` (decimal), or a number of bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (say 8GiB, 512MiB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def gpu_budget_bytes(value: int | str | dict[int, int | str] | None, gpus: int) -> dict[int, int]:
    """`gpu_memory_budget` by GPU index: one size for each of the `gpus` GPUs, or sizes by index."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {int(i): parse_bytes(size) for i, size in value.items()}
    return dict.fromkeys(range(gpus), parse_bytes(value))


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


def estimate(d: Deployment) -> Footprint:
    gpu = d.backend.gpu_estimate_bytes() if isinstance(d.backend, Supervised) else {}
    return Footprint(estimate_bytes(d), gpu)


def footprint(d: Deployment) -> Footprint:
    """What `d` holds or will hold: measured the last time it ran, else estimated; while
    it runs, never less than it has reached in this run."""
    known = d.footprint if d.footprint is not None else estimate(d)
    return known.most(d.peak) if d.peak is not None else known


def idle(d: Deployment) -> bool:
    return d.active == 0 and d.admission.running == 0 and d.admission.waiting == 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class Residency:
    def __init__(
        self,
        router: Router,
        budget_bytes: int | None,
        *,
        gpu_budgets: dict[int, int] | None = None,
        gpu: GpuCollector | None = None,
        store: FootprintStore | None = None,
    ) -> None:
        self.router = router
        self.budget = budget_bytes
        self.gpu_budgets = gpu_budgets or {}  # by GPU index; a GPU not named is not bounded
        self.gpu = gpu  # NVML, when a GPU answers: what each worker holds on it
        self.store = store
        self._lock = asyncio.Lock()  # every load and unload, one at a time: the sums stay true
        for d in self.router.deployments:
            if store is not None and isinstance(d.backend, Supervised):
                d.footprint = store.get(d.backend.footprint_key())
        self._check()

    @property
    def bounded(self) -> bool:
        return self.budget is not None or bool(self.gpu_budgets)

    def _short(self, need: Footprint, held: Footprint) -> list[Budget]:
        """The budgets `need` on top of `held` would overrun: HOST, and GPU indexes."""
        short: list[Budget] = [HOST] if self.budget is not None and held.host + need.host > self.budget else []
        for i, limit in sorted(self.gpu_budgets.items()):
            if held.gpu.get(i, 0) + need.gpu.get(i, 0) > limit:
                short.append(i)
        return short

    def _limit(self, budget: Budget) -> int:
        return (self.budget or 0) if budget == HOST else self.gpu_budgets[budget]

    def _check(self) -> None:
        """At start: a model that cannot fit even alone, or startup models that cannot
        fit together, is a configuration error."""
        if not self.bounded:
            return  # no estimate needed (a GGUF's is read from its file)
        ours = [d for d in self.router.deployments if managed(d)]
        nothing = Footprint(0)
        for d in ours:
            if short := self._short(footprint(d), nothing):
                raise ValueError(
                    f"model {d.name} needs about {self._describe(footprint(d))}, more than the memory budget "
                    f"({self._budgets(short)}) by itself"
                )
        at_start = [d for d in ours if d.config.load != "on_demand"]
        together = self._sum(at_start)
        if short := self._short(together, nothing):
            names = ", ".join(d.name for d in at_start)
            raise ValueError(
                f"the models loaded at start ({names}) need about {self._describe(together)} together, more than "
                f"the memory budget ({self._budgets(short)}): make some `load: on_demand`"
            )

    def _budgets(self, short: list[Budget]) -> str:
        def name(b: Budget) -> str:
            return "memory_budget" if b == HOST else f"gpu_memory_budget GPU {b}"

        return ", ".join(f"{name(b)} {_mib(self._limit(b))}" for b in short)

    @staticmethod
    def _describe(f: Footprint) -> str:
        return ", ".join([_mib(f.host)] + [f"{_mib(b)} on GPU {i}" for i, b in sorted(f.gpu.items())])

    @staticmethod
    def _sum(models: list[Deployment]) -> Footprint:
        host, gpu = 0, dict[int, int]()
        for d in models:
            f = footprint(d)
            host += f.host
            for i, b in f.gpu.items():
                gpu[i] = gpu.get(i, 0) + b
        return Footprint(host, gpu)

    def holding(self) -> Footprint:
        """The footprint of the managed models that hold memory now, host and GPU by GPU."""
        states = (State.READY, State.LOADING, State.RESTARTING, State.DRAINING)
        return self._sum([d for d in self.router.deployments if managed(d) and d.state in states])

    def used(self) -> int:
        """The host memory of the managed models that hold memory now."""
        return self.holding().host

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
        if not self.bounded:
            return
        need = footprint(d)
        if short := self._short(need, Footprint(0)):  # known only now for a model fetched on demand
            raise OpenAIError(
                503,
                f"the model {d.name!r} needs about {self._describe(need)}, more than the memory budget "
                f"({self._budgets(short)}) by itself",
                code="memory_budget",
            )
        deadline = time.monotonic() + (d.config.max_queue_wait_s or 30.0)
        while short := self._short(need, self.holding()):
            victim = self._victim(exclude=d, short=short)
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

    def _victim(self, exclude: Deployment, short: list[Budget]) -> Deployment | None:
        """The least recently used model that may go and frees what is short (host
        memory: any; a GPU: one that holds some of it): loaded, idle, not pinned, and
        resident for at least its min_resident_s (so two models cannot thrash faster)."""
        now = time.monotonic()
        gpus = [b for b in short if b != HOST]
        candidates = [
            m
            for m in self.router.deployments
            if managed(m)
            and m is not exclude
            and m.state is State.READY
            and m.config.load != "pinned"
            and idle(m)
            and now - m.loaded_at >= m.config.min_resident_s
            and (HOST in short or any(footprint(m).gpu.get(i, 0) for i in gpus))
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
        log.info("model %s loaded in %.2fs (%s budgeted)", d.name, d.last_load_s, self._describe(footprint(d)))
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
        self._measure(d)
        if d.peak is not None:  # what it really took this run: the next decision uses it
            d.footprint, d.peak = d.peak, None
            self._keep(d, d.footprint)
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

    def _measure(self, d: Deployment) -> None:
        """What `d`'s worker holds now: its peak RSS, as its engine reports it, and its
        GPU memory, as NVML counts it for the worker's process. A GPU's memory is
        sampled, but engines allocate it as they load and their allocators keep it,
        so its high point shows up within a second."""
        if not isinstance(d.backend, Supervised) or d.backend.pid is None:
            return
        host = d.backend.stats().running_memory_bytes
        gpu = self.gpu.by_process().get(d.backend.pid, {}) if self.gpu is not None else {}
        if not host and not gpu:
            return  # this engine does not measure itself, and no GPU holds any of it
        if not host:  # measured on its GPUs only: the host's part stays what was known
            host = (d.footprint if d.footprint is not None else estimate(d)).host
        now = Footprint(host, gpu)
        d.peak = now if d.peak is None else d.peak.most(now)

    def _keep(self, d: Deployment, measured: Footprint) -> None:
        if self.store is not None and isinstance(d.backend, Supervised):
            self.store.put(d.backend.footprint_key(), d.name, measured)

    def measure_all(self) -> None:
        """Sample every loaded worker; keep on disk the footprints that grew, so a
        gateway that is killed has kept them too (never less than the last run's: a
        run cut short does not lower what the next load budgets)."""
        for d in self.router.deployments:
            if managed(d) and d.state is State.READY:
                self._measure(d)
                if d.peak is not None:
                    self._keep(d, d.peak.most(d.footprint) if d.footprint is not None else d.peak)

    async def run(self) -> None:
        """Sample the loaded workers' memory, and unload models idle for longer than
        their idle_unload_s."""
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            with suppress(Exception):  # a worker that died between two reads: the next round sees it
                self.measure_all()
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
