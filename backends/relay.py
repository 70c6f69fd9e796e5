"""The relay interface: backends that forward a client's JSON to OpenAI-compatible
servers and stream the answer back (backends/openai). A relay never tokenizes,
never samples and holds no weights: the servers behind it do all three, so it
shares with token engines only start, stop and stats."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from backends.base import BackendStats, Kind


@dataclass(slots=True)
class Event:
    """One server-sent event of an upstream's stream, parsed once."""

    raw: bytes  # the event's JSON, byte for byte as the upstream sent it
    data: dict[str, Any]

    @property
    def error(self) -> dict[str, Any] | None:
        err = self.data.get("error")
        return err if isinstance(err, dict) else None


@dataclass(slots=True)
class Forwarded:
    """What the upstreams answered: a status and a JSON body (a whole response, or an
    error), or the first event of a stream and the rest of it."""

    status: int
    body: dict[str, Any] | None = None
    first: Event | None = None
    rest: AsyncGenerator[Event, None] | None = None


class UpstreamFailed(Exception):
    """An upstream stream broke or timed out (before its first event: worth another
    replica; after it: an error event for the client)."""

    def __init__(self, status: int, message: str, code: str = "upstream_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error_status(error: dict[str, Any]) -> int:
    """The HTTP status an upstream error stands for: servers put it in `code` (vLLM)
    or only say `type` (OpenAI, Lightgate)."""
    code = error.get("code")
    if isinstance(code, int) and 400 <= code <= 599:
        return code
    kind = str(error.get("type", ""))
    if kind in ("server_error", "service_unavailable", "internal_server_error", "api_error"):
        return 503 if kind == "service_unavailable" else 500
    if kind == "rate_limit_error":
        return 429
    return 400


@runtime_checkable
class Relay(Protocol):
    """Forwards requests as they came to OpenAI-compatible servers."""

    name: str
    kind: Kind  # Kind.RELAY: a class attribute

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def forward(self, path: str, body: dict[str, Any], *, stream: bool, request_id: str = "") -> Forwarded:
        """POST `body` to `path` of a server; a stream's events come back as they arrive.
        Closing `rest` early (the client left) closes the upstream stream."""
        ...

    @property
    def upstream_model(self) -> str | None:
        """The name the servers know the model by, when it is not the client's."""
        ...

    @property
    def max_model_len(self) -> int:
        """The servers' context length as they report it; 0 when they do not say."""
        ...

    def stats(self) -> BackendStats: ...
