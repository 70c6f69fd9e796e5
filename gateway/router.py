"""Model names and aliases to deployments (a started backend and its admission queue)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from backends import create_backend
from backends.base import Backend
from compressed_models.catalog import resolve
from gateway.config import ModelConfig
from gateway.errors import OpenAIError
from gateway.limits import AdmissionQueue

log = logging.getLogger("lightgate")


@dataclass
class Deployment:
    config: ModelConfig
    backend: Backend
    admission: AdmissionQueue
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    failure: str | None = None
    dead: bool = False  # the engine stopped for good: only a restart brings it back

    @property
    def name(self) -> str:
        return self.config.name

    def died(self, reason: str) -> None:
        """Take the model out of service after its engine has died: new requests get
        503, /ready says why, and /health fails so that a supervisor restarts us."""
        if not self.dead:
            log.error("model %s: the %s engine died: %s", self.name, self.backend.name, reason)
        self.ready, self.dead, self.failure = False, True, f"its engine died: {reason}"


# Backends that hold no weights: their `variant` is a label, never a file to find here.
FORWARDING_BACKENDS = frozenset({"openai"})


def build_deployment(config: ModelConfig) -> Deployment:
    path = config.path
    if path is None and config.variant is not None and config.backend not in FORWARDING_BACKENDS:
        path = str(resolve(config.variant))
    backend = create_backend(config.backend, path, dict(config.options))
    # max_running is fixed once the backend has started and says what it can run.
    return Deployment(config, backend, AdmissionQueue(max_running=1, max_queue=config.max_queue))


class Router:
    def __init__(self, deployments: list[Deployment]) -> None:
        self.deployments = deployments
        self._by_name = {name: d for d in deployments for name in [d.config.name, *d.config.aliases]}

    def get(self, model: str) -> Deployment:
        deployment = self._by_name.get(model)
        if deployment is None:
            raise OpenAIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
        if not deployment.ready:
            reason = deployment.failure or "it is still loading"
            raise OpenAIError(503, f"the model {model!r} is not ready: {reason}", code="model_not_ready")
        return deployment

    @property
    def ready(self) -> bool:
        return all(d.ready for d in self.deployments)

    @property
    def dead(self) -> list[str]:
        """The models whose engine has died."""
        return [d.name for d in self.deployments if d.dead]

    async def start(self) -> None:
        await asyncio.gather(*(self._start_one(d) for d in self.deployments))

    async def _start_one(self, d: Deployment) -> None:
        began = time.perf_counter()
        try:
            await d.backend.start()
        except Exception as exc:  # one broken model must not take the others down
            d.failure = f"failed to start: {exc}"
            log.exception("model %s failed to start", d.name)
            return
        d.admission.max_running = d.config.max_running or d.backend.stats().max_running
        d.ready = True
        log.info("model %s ready on %s in %.2fs", d.name, d.backend.name, time.perf_counter() - began)

    async def stop(self) -> None:
        for d in self.deployments:
            d.ready = False
            await d.backend.stop()
