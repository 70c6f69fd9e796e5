"""API keys: which paths need one, and whether the one a request carries is valid
(Authorization: Bearer KEY), compared in constant time."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

from gateway.config import Settings
from gateway.errors import OpenAIError


def check_api_key(headers: Headers, path: str, settings: Settings) -> None:
    if not settings.api_keys or not path.startswith("/v1/"):
        return
    scheme, _, key = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in settings.api_keys):
        raise OpenAIError(
            401,
            "a valid API key is required (Authorization: Bearer KEY)",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
