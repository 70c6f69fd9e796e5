"""The front door: a plain ASGI middleware that turns a request away before any route,
parser or engine sees it, and cheaply, because under overload most requests end here.

In order: a body over `max_body_bytes` (413; by its Content-Length, or counted as it
arrives when it has none), the API key (401; the key's tenant rides on the request's
record), then, for a request that names a model: the model the key may use (403), the
key's concurrency, requests and tokens per minute (429), and the model's queue: a
request that would wait past its deadline is refused now (429 with Retry-After), not
after waiting. The model's name is all that is read from the body (a scan for its one
`"model"` key; JSON only if that is ambiguous), and a refusal's body is built once per
model and reason (and key). Every answer to a key with limits carries OpenAI's x-ratelimit-*
headers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admission import QueueFull, retry_after
from gateway.config import Settings
from gateway.errors import OpenAIError
from gateway.request_log import RequestRecord
from gateway.residency import Residency
from gateway.router import Deployment, Router
from gateway.tenants import Keyring, Tenant, digest

# Routes that name a model in their body, and those that queue for its engine.
MODEL_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses"})
TOKENIZER_ROUTES = frozenset({"/tokenize", "/detokenize"})
WAIT_HEADER = "x-max-queue-wait-s"

_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')


def model_name(body: bytes) -> str | None:
    """The body's model, read without parsing the rest; None if it has none."""
    found = _MODEL.findall(body)
    try:
        # None found, or "model" nested somewhere too (metadata, a schema): parse it all.
        name = json.loads(b'"' + found[0] + b'"') if len(found) == 1 else json.loads(body).get("model")
    except (ValueError, AttributeError, RecursionError):
        return None  # not JSON, or not an object: the route's parser says so in full
    return name if isinstance(name, str) else None


def needs_key(path: str) -> bool:
    """Every route that runs model code (the tokenizer included) needs a key when keys are set."""
    return path.startswith("/v1/") or path in TOKENIZER_ROUTES


class _Refused(Exception):
    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]], reason: str | None) -> None:
        self.status, self.body, self.headers, self.reason = status, body, headers, reason


def _error_body(err: OpenAIError) -> bytes:
    return err.body().model_dump_json().encode()


class GuardMiddleware:
    def __init__(
        self, app: ASGIApp, settings: Settings, keyring: Keyring, router: Router, residency: Residency
    ) -> None:
        self.app = app
        self.settings = settings
        self.keyring = keyring
        self.router = router
        self.residency = residency
        self.metrics_digest = digest(settings.metrics_key) if settings.metrics_key else None
        self._bodies: dict[tuple[str, str, str], bytes] = {}  # (model, reason, key's name) -> a refusal's body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record: RequestRecord = scope["state"]["record"]
        tenant: Tenant | None = None
        counted = False
        deployment: Deployment | None = None
        try:
            headers = Headers(scope=scope)
            self._check_size(headers)
            tenant = record.tenant = self._identify(headers, scope["path"])
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(receive, headers)
                if body is None:
                    return  # the client left while sending it
                if scope["path"] in MODEL_ROUTES or scope["path"] in TOKENIZER_ROUTES:
                    counted, deployment = self._admit(scope["path"], body, headers, record, tenant)
                receive = _replay(body, receive)
        except OpenAIError as exc:
            await _send_error(send, exc.status, _error_body(exc), _headers_of(exc), record, exc.code)
            return
        except _Refused as r:
            await _send_error(send, r.status, r.body, r.headers, record, r.reason)
            return
        try:
            if deployment is None:
                await self.app(scope, receive, _with_limits(send, tenant) if tenant is not None else send)
                return
            with self.residency.using(deployment):  # not evicted until its last byte
                try:
                    await self.residency.ensure(deployment)  # an unloaded model loads; the request waits
                except OpenAIError as exc:
                    await _send_error(send, exc.status, _error_body(exc), _headers_of(exc), record, exc.code)
                    return
                await self.app(scope, receive, _with_limits(send, tenant) if tenant is not None else send)
        finally:
            if counted and tenant is not None:
                tenant.in_flight -= 1

    # -- the checks, cheapest first -------------------------------------------------------

    def _check_size(self, headers: Headers) -> None:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body_bytes:
            raise self._too_large()

    def _too_large(self) -> OpenAIError:
        limit = self.settings.max_body_bytes
        return OpenAIError(413, f"the request body is larger than {limit} bytes", code="body_too_large")

    def _identify(self, headers: Headers, path: str) -> Tenant | None:
        if path == "/metrics" and self.metrics_digest is not None:
            if digest(_bearer(headers)) != self.metrics_digest:
                raise _unauthorized("GET /metrics needs the metrics key (Authorization: Bearer KEY)")
            return None
        if not self.keyring.enabled or not needs_key(path):
            return None
        tenant = self.keyring.identify(_bearer(headers))
        if tenant is None:
            raise _unauthorized("a valid API key is required (Authorization: Bearer KEY)")
        return tenant

    async def _read_body(self, receive: Receive, headers: Headers) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:  # a body without Content-Length, counted as it comes
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _admit(
        self, path: str, body: bytes, headers: Headers, record: RequestRecord, tenant: Tenant | None
    ) -> tuple[bool, Deployment | None]:
        """Refuse (raise) or let through: whether the request now counts in its key's
        requests in flight (to be taken off when it ends), and the model it names."""
        name = model_name(body)
        deployment = self.router.find(name) if name is not None else None
        if deployment is None:
            return False, None  # no model, or an unknown one: the route answers with the details
        if tenant is not None:
            if not tenant.may_use([deployment.name, *deployment.config.aliases]):
                raise self._refusal(403, name or "", "model_not_allowed", tenant)
            limit = tenant.config.max_concurrent
            if limit is not None and tenant.in_flight >= limit:
                raise self._refusal(429, name or "", "concurrent_requests", tenant, retry=1.0)
            if tenant.requests is not None and tenant.requests.remaining() < 1:
                raise self._refusal(429, name or "", "requests_per_minute", tenant, tenant.requests.wait_for(1))
            if tenant.tokens is not None and tenant.tokens.remaining() < 1:
                raise self._refusal(429, name or "", "tokens_per_minute", tenant, tenant.tokens.wait_for(1))
        wait = headers.get(WAIT_HEADER)
        if wait is not None:
            try:
                record.max_wait_s = float(wait)
            except ValueError:
                record.max_wait_s = -1.0
            if not record.max_wait_s >= 0:  # also NaN
                raise OpenAIError(400, f"{WAIT_HEADER} must be a number of seconds >= 0", code="invalid_header")
        if path in MODEL_ROUTES and deployment.ready:
            try:
                deployment.admission.check(record.flow, record.max_wait_s)
            except QueueFull as exc:
                record.bind(deployment, record.usage)
                raise self._refusal(429, deployment.name, exc.code, tenant, exc.retry_after_s) from exc
        if tenant is None:
            return False, deployment
        if tenant.requests is not None:
            tenant.requests.take(1)
        tenant.in_flight += 1
        return True, deployment

    def _refusal(
        self, status: int, model: str, reason: str, tenant: Tenant | None, retry: float | None = None
    ) -> _Refused:
        key = (model, reason, tenant.name if tenant is not None else "")  # the message names both
        body = self._bodies.get(key)
        if body is None:
            body = self._bodies[key] = _error_body(_explain(status, model, reason, tenant))
        headers = [] if retry is None else [(b"retry-after", str(retry_after(retry)).encode())]
        return _Refused(status, body, headers, reason)


_RETRY = "retry after the Retry-After header's seconds"
_REASONS = {
    "model_not_allowed": "the key {who} may not use the model {model!r}",
    "concurrent_requests": "the key {who} has as many requests in flight as it may; retry when one ends",
    "requests_per_minute": "the key {who} has used its requests per minute; " + _RETRY,
    "tokens_per_minute": "the key {who} has used its tokens per minute; " + _RETRY,
    "queue_wait": "the model {model!r} is overloaded: a request now would wait for a slot past its deadline "
    "(max_queue_wait_s, or the x-max-queue-wait-s header); " + _RETRY,
    "queue_full": "the model {model!r} is overloaded: its queue is full; " + _RETRY,
}


def _explain(status: int, model: str, reason: str, tenant: Tenant | None) -> OpenAIError:
    who = repr(tenant.name) if tenant is not None else ""
    param = "model" if reason == "model_not_allowed" else None
    return OpenAIError(status, _REASONS[reason].format(who=who, model=model), code=reason, param=param)


def _bearer(headers: Headers) -> str:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _headers_of(exc: OpenAIError) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]


async def _send_error(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], record: RequestRecord, reason: Any
) -> None:
    if status in (401, 403, 429):
        record.refusal = reason
    tenant = record.tenant
    extra = tenant.headers() if tenant is not None else []
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body, read once here, handed to the route as if it came now; then the
    connection's own messages (the disconnect the routes watch for)."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def _with_limits(send: Send, tenant: Tenant) -> Callable[[Message], Any]:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *tenant.headers()]}
        await send(message)

    return sending
