"""Requests for a model served by a relay (backends/relay.py; today the `openai`
backend): the client's JSON goes to an upstream replica as it came, unknown fields
included, and the answer comes back as it went, read on the way for the request's
metrics and access log.

Validation, API keys, admission and metrics are the gateway's, as for every model;
tokenizing, chat templates and sampling are the upstream's. Each streamed event is
parsed once and forwarded byte for byte unless the model must be renamed or a usage
chunk the client did not ask for must be dropped (we always ask the upstream for
usage, so that token counts are the engine's own)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from backends.relay import Event, Forwarded, UpstreamFailed, error_status
from gateway.errors import OpenAIError
from gateway.generation import admission_slot
from gateway.request_log import RequestRecord
from gateway.router import Deployment
from gateway.streaming import event_stream, until_disconnect


async def forward(
    request: Request, deployment: Deployment, record: RequestRecord, path: str, *, stream: bool, choices: int
) -> Response:
    """Serve one request of `path` (/v1/completions, /v1/chat/completions) upstream."""
    body: dict[str, Any] = dict(await request.json())  # parsed once already; Starlette kept it
    record.expect(0, choices, body.get("messages", body.get("prompt")))
    call = _Call(deployment, path, body, record)
    if not stream:
        return await until_disconnect(request, _whole(call))
    options = body.get("stream_options") or {}
    call.drop_usage = not options.get("include_usage")
    body["stream_options"] = {**options, "include_usage": True}
    return await event_stream(request, record, _relay(call))


async def relay_json(deployment: Deployment, path: str, body: dict[str, Any], request_id: str) -> JSONResponse:
    """A small JSON request (/tokenize, /detokenize) answered by an upstream as is."""
    answer = await deployment.relay.forward(path, body, stream=False, request_id=request_id)
    if answer.status != 200:
        raise upstream_error(answer)
    return JSONResponse(answer.body)


def upstream_error(answer: Forwarded) -> OpenAIError:
    """An upstream's error answer, relayed with its status and its words."""
    err = (answer.body or {}).get("error")
    if not isinstance(err, dict):
        err = {"message": f"the upstream answered {answer.status}"}
    code = err.get("code")
    headers = {"Retry-After": "1"} if answer.status in (429, 503) else None
    return OpenAIError(
        answer.status,
        str(err.get("message") or f"the upstream answered {answer.status}"),
        param=err.get("param") if isinstance(err.get("param"), str) else None,
        code=None if code is None else str(code),
        headers=headers,
    )


class _Call:
    """One forwarded request, and what the gateway reads of its answer: tokens as they
    stream, finish reasons, usage; and the rewrites (model name, an unasked-for usage chunk)."""

    def __init__(self, deployment: Deployment, path: str, body: dict[str, Any], record: RequestRecord) -> None:
        self.deployment = deployment
        self.relay = deployment.relay
        self.path = path
        self.body = body
        self.record = record
        self.client_model = body.get("model")
        self.rename = self.relay.upstream_model not in (None, self.client_model)
        self.drop_usage = False

    async def send(self, *, stream: bool) -> Forwarded:
        answer = await self.relay.forward(self.path, self.body, stream=stream, request_id=self.record.request_id)
        if answer.status != 200:
            raise upstream_error(answer)
        return answer

    def read(self, data: dict[str, Any], streamed: bool) -> bool:
        """Record one event or body; False when it is a usage chunk the client did not want."""
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if streamed:
                delta = choice.get("delta")
                text = choice.get("text") if delta is None else delta.get("content") if isinstance(delta, dict) else ""
                tokens = 1 if text or (isinstance(delta, dict) and delta.get("tool_calls")) else 0
            else:
                tokens, text = 0, ""  # a whole answer: the count comes from usage
            self.record.on_delta(int(choice.get("index", 0)), tokens, choice.get("finish_reason"), text or "")
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.record.on_usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            if self.drop_usage and not data.get("choices"):
                return False
        if self.rename:
            data["model"] = self.client_model
        return True

    def bytes_of(self, event: Event) -> bytes:
        return json.dumps(event.data, separators=(",", ":")).encode() if self.rename else event.raw


async def _whole(call: _Call) -> JSONResponse:
    async with admission_slot(call.deployment, call.record):
        answer = await call.send(stream=False)
    body = answer.body or {}
    call.read(body, streamed=False)
    return JSONResponse(body)


async def _relay(call: _Call) -> AsyncGenerator[bytes, None]:
    async with admission_slot(call.deployment, call.record):
        answer = await call.send(stream=True)
        if answer.first is None or answer.rest is None:
            return  # an empty stream: [DONE] alone
        rest = answer.rest
        try:
            event: Event | None = answer.first
            while event is not None:
                err = event.error
                if err is not None:  # inside a stream that has begun: an error event, then the end
                    raise upstream_error(Forwarded(error_status(err), event.data))
                if call.read(event.data, streamed=True):
                    yield call.bytes_of(event)
                event = await anext(rest, None)
        except UpstreamFailed as exc:
            raise OpenAIError(exc.status, str(exc), code=exc.code) from exc
        finally:
            await rest.aclose()  # a client gone: the upstream connection closes, its engine stops
