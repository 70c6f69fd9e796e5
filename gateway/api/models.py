"""GET /v1/models, /health (the process is alive and no engine has died) and /ready
(every model is loaded, and the gateway is not draining)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.errors import OpenAIError
from gateway.protocol import ModelCard, ModelList
from gateway.router import Deployment, Router

router = APIRouter()


def _cards(d: Deployment) -> list[ModelCard]:
    max_len = (d.backend.max_model_len or None) if d.started else None  # 0: an upstream that does not say
    memory = d.backend.stats().running_memory_bytes if d.started else None
    gpu = {str(i): b for i, b in sorted(d.peak.gpu.items())} if d.started and d.peak is not None else {}
    return [
        ModelCard(
            id=name,
            created=d.created,
            root=d.config.name,
            max_model_len=max_len,
            backend=d.config.backend,
            variant=d.config.variant,
            state=d.state.value,
            memory_bytes=memory,
            gpu_memory_bytes=gpu or None,
        )
        for name in [d.config.name, *d.config.aliases]
    ]


def _visible(request: Request) -> list[Deployment]:
    """The models the request's key may use (every model without keys)."""
    r: Router = request.app.state.router
    tenant = request.state.record.tenant
    return [d for d in r.deployments if tenant is None or tenant.may_use([d.config.name, *d.config.aliases])]


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[card for d in _visible(request) for card in _cards(d)])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    for d in _visible(request):
        for card in _cards(d):
            if card.id == model_id:
                return card
    raise OpenAIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Alive, unless an engine has died: a process that can no longer serve one of its
    models fails its liveness probe and gets restarted (vLLM's own server exits)."""
    dead = request.app.state.router.dead
    if dead:
        return JSONResponse({"status": "engine_dead", "models": dead}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    r: Router = request.app.state.router
    models = {d.name: d.reason or d.state.value for d in r.deployments}
    draining = request.app.state.drain.draining  # shutting down: take no new traffic
    is_ready = r.ready and not draining
    body = {"ready": is_ready, "draining": draining, "models": models}
    return JSONResponse(body, status_code=200 if is_ready else 503)
