"""The application factory: routes, error handlers, and the models' lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response

from compressed_models.catalog import cache_root
from gateway.api import admin, chat, completions, embeddings, metrics, models, responses, tokenize
from gateway.config import Settings
from gateway.drain import Drain, DrainMiddleware
from gateway.errors import install_handlers
from gateway.footprints import FootprintStore
from gateway.gpu import GpuCollector
from gateway.guard import GuardMiddleware
from gateway.metrics import Metrics
from gateway.request_log import RequestLogMiddleware
from gateway.residency import Residency, gpu_budget_bytes, parse_bytes
from gateway.responses_store import ResponseStore
from gateway.router import Router, build_deployment
from gateway.streaming import ClientDisconnected
from gateway.tenants import Keyring

log = logging.getLogger("lightgate")


def create_app(settings: Settings) -> FastAPI:
    router = Router([build_deployment(m) for m in settings.models])
    budget = parse_bytes(settings.memory_budget) if settings.memory_budget is not None else None
    store = FootprintStore(Path(settings.footprints_file or cache_root() / "footprints.json"))
    gpu = GpuCollector.create()
    gpu_budgets = gpu_budget_bytes(settings.gpu_memory_budget, gpu.count if gpu is not None else 0)
    if settings.gpu_memory_budget is not None and gpu is None:
        log.warning("gpu_memory_budget is set, but NVML sees no GPU here: it bounds the models' estimates only")
    # A model that cannot fit is an error here, at start.
    residency = Residency(router, budget, gpu_budgets=gpu_budgets, gpu=gpu, store=store)
    keyring = Keyring(settings.tenants, settings.api_keys, settings.tenants_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load in the background so /health answers at once and /ready says 503
        # until they are in; a request for a loading model gets 503 too.
        loading = asyncio.create_task(router.start())
        watching = asyncio.create_task(keyring.watch())
        unloading = asyncio.create_task(residency.run())
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # SIGHUP re-reads the keys (only the main thread may take signals; tests run elsewhere).
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keyring.reload)
        try:
            yield
        finally:
            watching.cancel()
            unloading.cancel()
            with contextlib.suppress(Exception):
                residency.measure_all()  # the footprints of the models still loaded, kept for the next start
            await loading
            await router.stop()
            app.state.responses.close()

    app = FastAPI(title="Lightgate", version="0.1.0", lifespan=lifespan)
    app.state.router = router
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.residency = residency
    app.state.metrics = Metrics(router, residency) if settings.metrics else None
    app.state.drain = Drain(on_begin=router.drain)
    db = settings.responses_db or str(cache_root() / "responses.sqlite")
    app.state.responses = ResponseStore(db, settings.responses_ttl_s, settings.responses_max)
    install_handlers(app)

    # The last added runs first: every request gets its id and its log line, even
    # one the guard or a drain turns away.
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    app.add_middleware(GuardMiddleware, settings=settings, keyring=keyring, router=router, residency=residency)
    app.add_middleware(
        RequestLogMiddleware,
        metrics=app.state.metrics,
        access=settings.access_log,
        keep_text=settings.log_prompts,
    )

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody is left to read it

    for module in (completions, chat, responses, embeddings, models, tokenize, admin):
        app.include_router(module.router)
    if settings.metrics:
        app.include_router(metrics.router)
    return app
