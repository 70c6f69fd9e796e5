"""Model names and aliases to deployments: a backend (a token engine or a relay), its
admission queue, and its one state. The router turns catalog names into paths before
a backend is constructed, and starts and stops the backends."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import cast

from backends import backend_class, create_worker, embedder_class
from backends.base import Backend, Kind, Supervised
from backends.embedding import Embedder
from backends.relay import Relay
from compressed_models.catalog import VariantNotFound, manifest, resolve
from gateway.admission import AdmissionQueue
from gateway.config import ModelConfig
from gateway.errors import OpenAIError
from gateway.footprints import Footprint

log = logging.getLogger("lightgate")


class State(Enum):
    LOADING = "loading"  # starting: weights loading, upstreams probed
    READY = "ready"  # serving
    FAILED = "failed"  # its backend did not start (`reason` says why)
    DEAD = "dead"  # its engine died for good: only a restart of the gateway brings it back
    RESTARTING = "restarting"  # its engine worker died and is starting again; requests wait for it
    UNLOADED = "unloaded"  # not in memory (load: on_demand, or unloaded by the budget); a request loads it
    DRAINING = "draining"  # the gateway is shutting down: requests in flight finish, no new ones


# The transitions, each allowed only from these states (llama-swap's way: a state
# machine you can draw, and a wrong move is a bug that shows).
_FROM = {
    State.LOADING: {State.UNLOADED},
    State.UNLOADED: {State.READY, State.LOADING},
    State.READY: {State.LOADING, State.RESTARTING},
    State.FAILED: {State.LOADING},
    State.DEAD: {State.READY, State.DRAINING, State.RESTARTING},
    State.RESTARTING: {State.READY},
    State.DRAINING: {State.LOADING, State.READY, State.RESTARTING},
}


@dataclass(slots=True, frozen=True)
class ModelTraits:
    """What the model was trained for, from its config or else its catalog entry."""

    task: str = "generate"  # generate, or embed: an embedding model
    matryoshka_dimensions: tuple[int, ...] = ()  # widths an embedding may be cut to
    fim: tuple[str, str, str] | None = None  # fill-in-the-middle tokens: prefix, suffix, middle


@dataclass
class Deployment:
    config: ModelConfig
    backend: Backend | Relay | Embedder
    admission: AdmissionQueue
    traits: ModelTraits = field(default_factory=ModelTraits)
    created: int = field(default_factory=lambda: int(time.time()))
    state: State = State.LOADING
    reason: str | None = None  # why it is not ready, when it is failed or dead
    restarts: int = 0  # times its engine worker died and was started again
    # Residency (gateway/residency.py): requests between the front door and their last
    # byte, when it was last used and loaded, what it measured, and how it came and went.
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = 0.0
    footprint: Footprint | None = None  # what its worker took the last time it ran (kept across restarts)
    peak: Footprint | None = None  # what its worker has reached in this run
    loads: int = 0
    load_seconds_sum: float = 0.0
    last_load_s: float = 0.0
    unloads: dict[str, int] = field(default_factory=dict)  # by reason: idle, evicted, admin
    thrash: int = 0  # loads soon after this model was evicted
    evicted_at: float | None = None
    evicted_by: str | None = None
    fetching: asyncio.Lock = field(default_factory=asyncio.Lock)  # one fetch of its weights at a time

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> Kind:
        return self.backend.kind

    @property
    def task(self) -> str:
        return self.traits.task

    @property
    def engine(self) -> Backend:
        """The backend as a token engine (routes ask only after checking `kind` and `task`)."""
        if self.kind is not Kind.ENGINE:
            raise TypeError(f"the model {self.name!r} is served by a relay, not a token engine")
        if self.task != "generate":
            raise TypeError(f"the model {self.name!r} is an embedding model, not a generating one")
        return cast(Backend, self.backend)

    @property
    def embedder(self) -> Embedder:
        if self.kind is not Kind.ENGINE or self.task != "embed":
            raise TypeError(f"the model {self.name!r} is not an embedding model")
        return cast(Embedder, self.backend)

    @property
    def tokenizer(self) -> Backend | Embedder:
        """The engine that tokenizes for this model, generating or embedding."""
        return self.embedder if self.task == "embed" else self.engine

    def require_task(self, task: str, route: str) -> None:
        """A 400 for a request the model was not made for (completions from an
        embedding model, embeddings from a generating one)."""
        if self.kind is Kind.RELAY or self.task == task:
            return  # a relay's upstream judges for itself
        what = "an embedding model" if self.task == "embed" else "a text generation model"
        raise OpenAIError(
            400,
            f"the model {self.name!r} is {what}: it does not serve {route}",
            param="model",
            code="model_task_mismatch",
        )

    @property
    def relay(self) -> Relay:
        if self.kind is not Kind.RELAY:
            raise TypeError(f"the model {self.name!r} is served by a token engine, not a relay")
        return cast(Relay, self.backend)

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def started(self) -> bool:
        """Its backend is up (serving, or finishing what is in flight)."""
        return self.state in (State.READY, State.DRAINING)

    def move(self, to: State, reason: str | None = None) -> None:
        if self.state not in _FROM[to]:
            raise RuntimeError(f"model {self.name}: no transition from {self.state.value} to {to.value}")
        self.state, self.reason = to, reason

    def loaded(self, seconds: float) -> None:
        """Its engine has loaded (at start, or on demand) in `seconds`."""
        self.move(State.READY)
        self.loads += 1
        self.load_seconds_sum += seconds
        self.last_load_s = seconds
        self.loaded_at = self.last_used = time.monotonic()

    def worker_state(self, up: bool, reason: str | None) -> None:
        """Its engine worker died (`up` false) or is back: restarting, then ready again."""
        if not up and self.state is State.READY:
            self.restarts += 1
            self.move(State.RESTARTING, f"restarting: {reason}")
        elif up and self.state is State.RESTARTING:
            self.move(State.READY)

    def died(self, reason: str) -> None:
        """Take the model out of service after its engine has died: new requests get
        503, /ready says why, and /health fails so that a supervisor restarts us."""
        if self.state is State.DEAD:
            return
        log.error("model %s: the %s engine died: %s", self.name, self.backend.name, reason)
        self.move(State.DEAD, f"its engine died: {reason}")


def build_deployment(config: ModelConfig) -> Deployment:
    cls = backend_class(config.backend)
    traits = traits_of(config)
    if config.worker and (cls.kind is not Kind.ENGINE or traits.task != "generate"):
        raise ValueError(f"model {config.name}: worker: true is for token engines that generate text")
    options = dict(config.options)
    path = config.path
    if cls.kind is Kind.ENGINE:
        # Engines get paths, never catalog names. A relay's `variant` is only a label.
        if path is None and config.variant is not None:
            try:
                path = str(resolve(config.variant))
            except VariantNotFound:
                if config.fetch != "on_demand":
                    raise
                path = None  # its first request fetches it (gateway/residency.py)
        for name in getattr(cls, "weight_options", ()):
            options[name] = _weights(options.get(name))
        if traits.task == "embed":
            cls = embedder_class(config.backend)
    backend: Backend | Relay | Embedder
    if config.worker:
        backend = create_worker(
            config.backend,
            path,
            options,
            label=config.name,
            restart_wait_s=config.max_queue_wait_s or 30.0,
            unfetched=config.fetch == "on_demand" and path is None,
        )
    else:
        backend = cls(path, **options)
    # max_running is fixed once the backend has started and says what it can run.
    admission = AdmissionQueue(
        max_running=1,
        max_queue=config.max_queue,
        max_wait_s=config.max_queue_wait_s,
        fair=config.scheduling == "fair",
        reserve=config.interactive_reserve,
    )
    unfetched = isinstance(backend, Supervised) and backend.unfetched
    state = State.UNLOADED if config.load == "on_demand" or unfetched else State.LOADING
    deployment = Deployment(config, backend, admission, traits, state=state)
    if unfetched:
        deployment.reason = "its weights are fetched by its first request"
    if isinstance(backend, Supervised):
        backend.on_state = deployment.worker_state
    return deployment


def traits_of(config: ModelConfig) -> ModelTraits:
    try:
        entry = manifest(config.variant) if config.variant is not None else {}
    except VariantNotFound:  # a relay's variant is a label; an engine's fails in resolve()
        entry = {}
    fim = config.fim
    if fim is None and entry.get("fim"):
        fim = (entry["fim"]["prefix"], entry["fim"]["suffix"], entry["fim"]["middle"])
    dims = config.matryoshka_dimensions or entry.get("matryoshka_dimensions") or ()
    return ModelTraits(config.task or entry.get("task", "generate"), tuple(dims), fim)


def _weights(value: object) -> object:
    """An option that names weights: a catalog variant becomes its path; a file, or a
    value that is neither (such as `ngram`), stays for the backend to judge."""
    if not isinstance(value, str) or not value or Path(value).exists():
        return value
    try:
        return str(resolve(value))
    except VariantNotFound:
        return value


class Router:
    def __init__(self, deployments: list[Deployment]) -> None:
        self.deployments = deployments
        self._by_name = {name: d for d in deployments for name in [d.config.name, *d.config.aliases]}

    def find(self, model: str) -> Deployment | None:
        """The deployment a name or alias points to, whatever its state."""
        return self._by_name.get(model)

    def get(self, model: str) -> Deployment:
        deployment = self._by_name.get(model)
        if deployment is None:
            raise OpenAIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
        if not deployment.ready and deployment.state is not State.RESTARTING:  # a restart is waited for
            reason = deployment.reason or f"it is {deployment.state.value}"
            raise OpenAIError(503, f"the model {model!r} is not ready: {reason}", code="model_not_ready")
        return deployment

    @property
    def ready(self) -> bool:
        """Every model that should be in memory is (an unloaded one loads on demand)."""
        return all(d.ready or d.state is State.UNLOADED for d in self.deployments)

    @property
    def dead(self) -> list[str]:
        """The models whose engine has died."""
        return [d.name for d in self.deployments if d.state is State.DEAD]

    async def start(self) -> None:
        await asyncio.gather(*(self._start_one(d) for d in self.deployments))

    async def _start_one(self, d: Deployment) -> None:
        if d.state is State.UNLOADED:  # load: on_demand; only its tokenizer now
            if isinstance(d.backend, Supervised):
                await d.backend.prepare()
            return
        began = time.perf_counter()
        try:
            await d.backend.start()
        except Exception as exc:  # one broken model must not take the others down
            log.exception("model %s failed to start", d.name)
            if d.state is State.LOADING:
                d.move(State.FAILED, f"failed to start: {exc}")
            return
        d.admission.max_running = d.config.max_running or d.backend.stats().max_running
        if d.state is State.LOADING:  # not if a drain began while it loaded
            d.loaded(time.perf_counter() - began)
            log.info("model %s ready on %s in %.2fs", d.name, d.backend.name, time.perf_counter() - began)

    def drain(self) -> None:
        """The gateway is shutting down: every model that would serve stops taking new work."""
        for d in self.deployments:
            if d.state in (State.LOADING, State.READY, State.RESTARTING):
                d.move(State.DRAINING)

    async def stop(self) -> None:
        self.drain()
        for d in self.deployments:
            await d.backend.stop()
