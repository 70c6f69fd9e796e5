"""A plain ASGI middleware that turns a request away on its headers alone, before its
body is read or a route runs: a body over `max_body_bytes` (413), then a missing or
wrong API key (401, gateway/auth.py)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import check_api_key
from gateway.config import Settings
from gateway.errors import OpenAIError, error_response


def check_body_size(headers: Headers, settings: Settings) -> None:
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
        raise OpenAIError(
            413, f"the request body is larger than {settings.max_body_bytes} bytes", code="body_too_large"
        )


class GuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            try:
                check_body_size(headers, self.settings)
                check_api_key(headers, scope["path"], self.settings)
            except OpenAIError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
