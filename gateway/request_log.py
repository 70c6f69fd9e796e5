"""One record per HTTP request: its id (the client's `x-request-id`, or a new one,
echoed in the response), what it measured on the way, and when the response is
done, one JSON access-log line and the request's metrics.

The record rides in the ASGI scope's state, so the route that serves a model
binds it to that model (`bind`), the generation loop feeds it tokens as they
arrive (`admitted`, `on_chunk`), and the middleware closes it, whatever
happened in between: a finished response, an error, an exception, a client gone."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import Request
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.base import Chunk
from gateway.admission import ANONYMOUS, Flow
from gateway.metrics import Metrics, ModelSeries, labels_of
from gateway.router import Deployment
from gateway.tenants import Tenant

access_log = logging.getLogger("lightgate.access")

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # what we accept back into logs and headers
_PROBES = frozenset({"/metrics", "/health", "/ready"})  # scrapes and probes: logged only when they fail


@dataclass(slots=True, eq=False)
class RequestRecord:
    request_id: str
    arrival: float  # time.perf_counter() when the request came in
    keep_text: bool = False  # the operator asked for prompts and outputs in the log
    series: ModelSeries | None = None  # the model's metrics, once bound (and metrics are on)
    labels: tuple[str, str, str, str] | None = None  # model, backend, variant, task, once bound
    n_sequences: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    first_token: float | None = None
    last_token: float | None = None
    error_status: int | None = None  # an error sent inside a stream that had already begun
    done_embedding: bool = False  # an embedding request whose vectors are computed
    prompt: object = None
    output: list[str] = field(default_factory=list)
    tenant: Tenant | None = None  # the API key's tenant, when keys are set (gateway/guard.py)
    max_wait_s: float | None = None  # the client's x-max-queue-wait-s, if it sent one
    refusal: str | None = None  # why the request was turned away (its error code), for usage
    usage: Metrics | None = None  # where per-tenant usage is counted, when metrics are on
    ran: bool = False  # it got an admission slot: its prompt reached the engine
    _finish: dict[int, str] = field(default_factory=dict)  # sequence index -> finish reason
    _last_at: dict[int, float] = field(default_factory=dict)  # sequence index -> its last chunk's time

    # -- fed by the route and the generation loop ---------------------------------------

    @property
    def flow(self) -> Flow:
        """Whose request this is, for the admission queue's order."""
        t = self.tenant
        return ANONYMOUS if t is None else Flow(t.name, t.rank, t.config.weight)

    def bind(self, deployment: Deployment, metrics: Metrics | None) -> None:
        """The request is for this model: from here on it counts in the model's metrics."""
        self.labels = labels_of(deployment)
        self.series = metrics.series(deployment) if metrics is not None else None

    def expect(self, prompt_tokens: int, n_sequences: int, prompt: object) -> None:
        """What the engine is about to get (the prompt is kept only when logging it)."""
        self.prompt_tokens = prompt_tokens
        self.n_sequences = n_sequences
        if self.keep_text:
            self.prompt = prompt

    def admitted(self, waited_s: float) -> None:
        self.ran = True
        if self.series is not None:
            self.series.queue.observe(waited_s)
            self.series.prompt_tokens_total.inc(self.prompt_tokens)

    def embedded(self) -> None:
        """An embedding request's vectors are ready (it has no tokens to stream)."""
        self.done_embedding = True

    def on_chunk(self, index: int, chunk: Chunk) -> None:
        self.on_delta(index, len(chunk.token_ids), chunk.finish_reason, chunk.text)

    def on_delta(self, index: int, k: int, finish_reason: str | None, text: str) -> None:
        """Sequence `index` produced `k` tokens (and `text`), finishing if a reason is given."""
        now = time.perf_counter()
        if k:
            self.output_tokens += k
            if self.first_token is None:
                self.first_token = now
                if self.series is not None:
                    self.series.ttft.observe(now - self.arrival)
            if self.series is not None:
                self.series.generation_tokens_total.inc(k)
                previous = self._last_at.get(index)
                if previous is not None:
                    gap = (now - previous) / k  # k tokens in one chunk: k gaps of equal share
                    for _ in range(k):
                        self.series.itl.observe(gap)
            self._last_at[index] = now
            self.last_token = now
        if finish_reason is not None:
            self._finish[index] = finish_reason
        if self.keep_text and text:
            self.output.append(text)

    def on_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """An upstream's own count (forwarded requests): it replaces the gateway's
        guesses, and the counters catch up with what the stream did not show."""
        if self.series is not None:
            self.series.prompt_tokens_total.inc(max(0, prompt_tokens - self.prompt_tokens))
            self.series.generation_tokens_total.inc(max(0, completion_tokens - self.output_tokens))
        self.prompt_tokens = max(self.prompt_tokens, prompt_tokens)
        self.output_tokens = max(self.output_tokens, completion_tokens)

    # -- closed by the middleware ---------------------------------------------------------

    @property
    def tenant_name(self) -> str:
        return "anonymous" if self.tenant is None else self.tenant.name

    def outcome(self, status: int) -> str:
        status = self.error_status or status
        if status == 499:
            return "aborted"
        if status == 429:
            return "rejected"
        if status >= 500:
            return "server_error"
        if status >= 400:
            return "client_error"
        if self.done_embedding:
            return "embedded"
        if self.n_sequences and len(self._finish) == self.n_sequences:
            reasons = set(self._finish.values())
            return "length" if "length" in reasons else min(reasons)
        return "aborted"  # a 200 whose stream ended before every sequence did: the client left

    def close(self, status: int) -> dict[str, object]:
        """Record the metrics of a request that reached a model; return its log entry."""
        e2e = time.perf_counter() - self.arrival
        outcome = self.outcome(status) if self.labels is not None else None
        if self.series is not None and outcome is not None:
            s = self.series
            s.requests[outcome].inc()
            s.e2e.observe(e2e)
            if self.error_status is None and status < 400:
                s.prompt_tokens.observe(self.prompt_tokens)
                s.generation_tokens.observe(self.output_tokens)
            if self.first_token is not None and self.last_token is not None and self.output_tokens > 1:
                s.tpot.observe((self.last_token - self.first_token) / (self.output_tokens - 1))
        if self.usage is not None:
            self.usage.count_usage(
                self.tenant_name,
                None if self.labels is None else self.labels[0],
                outcome,
                self.prompt_tokens if self.ran else 0,
                self.output_tokens,
                self.refusal,
            )
        entry: dict[str, object] = {"request_id": self.request_id, "status": self.error_status or status}
        if self.tenant is not None:
            entry["tenant"] = self.tenant.name
        if self.refusal is not None:
            entry["refusal"] = self.refusal
        if self.labels is not None:
            entry.update(zip(("model", "backend", "variant", "task"), self.labels, strict=True))
            entry.update(
                outcome=outcome,
                prompt_tokens=self.prompt_tokens,
                output_tokens=self.output_tokens,
                ttft_s=None if self.first_token is None else round(self.first_token - self.arrival, 6),
            )
        entry["e2e_s"] = round(e2e, 6)
        if self.keep_text and self.labels is not None:
            entry.update(prompt=self.prompt, output="".join(self.output))
        return entry


def bind_request(request: Request, deployment: Deployment) -> RequestRecord:
    """The request's record, now counting against `deployment`."""
    record: RequestRecord = request.state.record
    record.bind(deployment, request.app.state.metrics)
    return record


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics | None, access: bool, keep_text: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access
        self.keep_text = keep_text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        record = RequestRecord(request_id, time.perf_counter(), keep_text=self.keep_text, usage=self.metrics)
        scope.setdefault("state", {})["record"] = record
        status = 500  # what an exception before the response started becomes

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            entry = record.close(status)
            if self.access and (status >= 400 or scope["path"] not in _PROBES):
                entry = {
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "method": scope["method"],
                    "path": scope["path"],
                    **entry,
                }
                access_log.info(json.dumps(entry, ensure_ascii=False, default=str))
