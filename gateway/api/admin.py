"""POST /admin/models/{name}/load and /unload: an operator moves a model in or out of
memory (models with worker: true), behind `admin_key`. Without an admin key set,
the routes do not exist (404)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.errors import OpenAIError
from gateway.residency import Residency, managed
from gateway.router import Deployment, Router

router = APIRouter()


def _deployment(request: Request, name: str) -> tuple[Deployment, Residency]:
    key = request.app.state.settings.admin_key
    if key is None:
        raise OpenAIError(404, "admin routes are off: set admin_key to use them", code="not_found")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), key.encode()):
        message = "the admin routes need the admin key (Authorization: Bearer KEY)"
        raise OpenAIError(401, message, code="invalid_api_key")
    r: Router = request.app.state.router
    d = r.find(name)
    if d is None:
        raise OpenAIError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
    if not managed(d):
        raise OpenAIError(
            400, f"the model {name!r} runs in the gateway's process: only worker: true models load and unload",
            param="model", code="not_a_worker",
        )  # fmt: skip
    return d, request.app.state.residency


def _state(d: Deployment) -> JSONResponse:
    return JSONResponse({"model": d.name, "state": d.state.value})


@router.post("/admin/models/{name:path}/load")
async def load(name: str, request: Request) -> JSONResponse:
    d, residency = _deployment(request, name)
    with residency.using(d):
        await residency.ensure(d)
    return _state(d)


@router.post("/admin/models/{name:path}/unload")
async def unload(name: str, request: Request) -> JSONResponse:
    d, residency = _deployment(request, name)
    if not await residency.unload(d, "admin"):
        raise OpenAIError(
            409, f"the model {name!r} is {d.state.value} with requests in flight or queued; it unloads when idle",
            code="model_busy",
        )  # fmt: skip
    return _state(d)
