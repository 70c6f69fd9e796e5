"""Every error a client sees is built here, as OpenAI's body:
{"error": {"message", "type", "param", "code"}} with the matching HTTP status."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backends.base import EngineRestarting
from gateway.protocol import ErrorBody, ErrorDetail, ParamError

log = logging.getLogger("lightgate")
_FIELD = re.compile(r"^(\d+|[a-z_][a-z0-9_]*)$")
_TYPE_TAGS = {"str", "int", "float", "bool", "none"}

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class OpenAIError(Exception):
    """An error to send to the client as it is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=ErrorDetail(
                message=self.message, type=_TYPES.get(self.status, "server_error"), param=self.param, code=self.code
            )
        )


def invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def error_response(err: OpenAIError) -> JSONResponse:
    return JSONResponse(err.body().model_dump(), status_code=err.status, headers=err.headers)


def from_validation(exc: RequestValidationError) -> OpenAIError:
    """The first validation problem, as a 400 that names the parameter."""
    first: dict[str, Any] = exc.errors()[0]
    # pydantic names union members in the path ("prompt.list[int].1"); keep fields and indices.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and _FIELD.match(str(p)) and p not in _TYPE_TAGS]
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, ParamError):
        return invalid(str(original), original.param)
    if first.get("type") == "json_invalid":
        return invalid(f"the request body is not valid JSON: {first.get('msg', '')}")
    if first.get("type") == "missing" and not loc:
        return invalid("the request body is missing or empty")
    if not loc:
        return invalid("the request body must be a JSON object")
    return invalid(f"{'.'.join(loc)}: {first.get('msg', 'invalid value')}", ".".join(loc))


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ParamError)
    async def _param(_: Request, exc: ParamError) -> JSONResponse:
        return error_response(invalid(str(exc), exc.param))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(from_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return error_response(OpenAIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(EngineRestarting)  # a worker died while the route tokenized
    async def _restarting(_: Request, exc: EngineRestarting) -> JSONResponse:
        message = f"the model is unavailable: {exc}"
        return error_response(OpenAIError(503, message, code="engine_restarting", headers={"Retry-After": "1"}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(OpenAIError(500, "internal server error", code="internal_error"))
