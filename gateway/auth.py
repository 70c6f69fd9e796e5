"""API keys (Authorization: Bearer KEY) and the request body size limit, checked in
a plain ASGI middleware before the body is read or a route runs."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Settings
from gateway.errors import OpenAIError, error_response


def check_headers(headers: Headers, path: str, settings: Settings) -> None:
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
        raise OpenAIError(
            413, f"the request body is larger than {settings.max_body_bytes} bytes", code="body_too_large"
        )
    if settings.api_keys and path.startswith("/v1/"):
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in settings.api_keys):
            raise OpenAIError(
                401,
                "a valid API key is required (Authorization: Bearer KEY)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )


class GuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                check_headers(Headers(scope=scope), scope["path"], self.settings)
            except OpenAIError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
