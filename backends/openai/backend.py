"""The `openai` backend, a relay (backends/relay.py): one model served by N
OpenAI-compatible upstream replicas (Lightgate engine pods, vLLM, trtllm-serve,
llama-server). The gateway forwards the client's JSON as it came; this module picks
the replica, fails over while nothing has reached the client yet, and never after,
and closes the upstream stream when the client leaves so the engine stops generating.

It does not tokenize: the upstream does, and reports usage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import httpx

from backends.base import BackendStats, Kind, UpstreamStats, engine_config
from backends.openai.pool import HealthPolicy, ReplicaPool
from backends.openai.routing import Policy, Replica, pick
from backends.openai.sse import DONE, json_object
from backends.openai.stream import UpstreamStream
from backends.relay import Event, Forwarded, UpstreamFailed, error_status
from leanhttp.client import Client, HttpError

log = logging.getLogger("lightgate")


@dataclass(slots=True)
class OpenAIUpstreamConfig:
    upstreams: list[str] = field(default_factory=list)  # base URLs: http://host:port
    resolve_dns: bool = False  # every address a host resolves to is a replica (a headless Service)
    resolve_interval_s: float = 10.0
    routing: str = Policy.LEAST_OUTSTANDING.value
    upstream_model: str | None = None  # the name upstreams know the model by; default: the client's
    api_key: str | None = None  # sent as Authorization: Bearer; prefer api_key_env for a Secret
    api_key_env: str | None = None  # the environment variable holding the key
    connect_timeout_s: float = 2.0
    first_token_timeout_s: float = 60.0  # also the longest silence allowed inside a stream
    total_timeout_s: float = 600.0
    max_attempts: int = 3  # replicas tried for one request before the client gets the error
    max_running: int = 1024  # the gateway's admission slots for this model, across replicas
    prefix_chars: int = 256  # prefix affinity hashes this much of the prompt
    load_factor: float = 1.25  # prefix affinity: a replica above this times the mean passes requests on
    health_path: str = "/health"
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    eject_after_failures: int = 2
    ejection_s: float = 10.0
    max_model_len: int | None = None  # default: what the upstream's /v1/models says

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ValueError("the openai backend needs `upstreams`: a list of base URLs (http://host:port)")
        for url in self.upstreams:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream {url!r} must start with http:// or https://")
        if self.routing not in set(Policy):  # a typo fails at start, naming the choices
            raise ValueError(f"routing {self.routing!r} is not one of {', '.join(Policy)}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")


class _Status(Exception):
    """An upstream answered a stream request with a status other than 200."""

    def __init__(self, status: int, content: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.content = content


def _error(status: int, message: str, code: str) -> dict[str, Any]:
    kind = "service_unavailable" if status == 503 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def affinity_key(body: dict[str, Any], chars: int) -> bytes:
    """The beginning of the prompt, as the replica's prefix cache would see it."""
    if "messages" in body:
        parts = []
        for m in body.get("messages") or []:
            if isinstance(m, dict):
                parts.append(f"{m.get('role')}\x00{m.get('content')}\x00")
        text = "".join(parts)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompt = prompt[0]  # a batch: its first prompt decides
        text = prompt if isinstance(prompt, str) else str(prompt)
    return text[:chars].encode("utf-8", "replace")


class OpenAIUpstreamBackend:
    name = "openai"
    kind = Kind.RELAY

    def __init__(self, path: str | None = None, **options: object) -> None:
        self.config = c = engine_config(OpenAIUpstreamConfig, "openai", options)
        self.policy = Policy(c.routing)
        health = HealthPolicy(
            c.health_path, c.health_interval_s, c.health_timeout_s, c.eject_after_failures, c.ejection_s
        )
        self.pool = ReplicaPool(c.upstreams, health, resolve_dns=c.resolve_dns, resolve_interval_s=c.resolve_interval_s)
        self._client: httpx.AsyncClient | None = None
        self._clients: dict[str, Client] = {}
        self._auth: dict[str, str] = {}
        self._watch: asyncio.Task[None] | None = None
        self._turn = 0
        self._max_model_len = c.max_model_len or 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        key = c.api_key or (os.environ.get(c.api_key_env) if c.api_key_env else None)
        if c.api_key_env and not key:
            raise ValueError(f"the environment variable {c.api_key_env} (api_key_env) is not set")
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        # httpx for the probes and other rare calls; requests go through self._http(replica).
        self._client = httpx.AsyncClient(headers=self._auth, timeout=httpx.Timeout(c.total_timeout_s))
        await self.pool.resolve()
        if self.pool.health.interval_s > 0:
            await self.pool.probe(self._client)
        up = [r.url for r in self.pool.available()]
        # Replicas may come up after the gateway (Kubernetes starts them in any order):
        # none healthy is a warning and a 503 per request, not a failed start.
        log.info("openai backend: %d of %d upstream replicas healthy", len(up), len(self.pool.replicas))
        if not self._max_model_len and up:
            self._max_model_len = await self._upstream_max_len(up[0])
        self._watch = asyncio.create_task(self.pool.run(self._client))

    async def _upstream_max_len(self, url: str) -> int:
        assert self._client is not None
        # vLLM and Lightgate put max_model_len on the model card; llama-server and
        # OpenAI do not (then /v1/models says nothing, and the upstream checks lengths).
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            cards = (await self._client.get(url + "/v1/models", timeout=self.config.health_timeout_s)).json()["data"]
            return int(next((c["max_model_len"] for c in cards if c.get("max_model_len")), 0))
        return 0

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._client is not None:
            await self._client.aclose()
        for client in self._clients.values():
            client.close()

    # -- forwarding ----------------------------------------------------------------------------

    async def forward(self, path: str, body: dict[str, Any], *, stream: bool, request_id: str = "") -> Forwarded:
        """Send the request to a replica; on a failure before anything could have reached
        the client (no connection, a 5xx or 429 status, a stream that broke or timed out
        before its first event, a first event that is a server error) try another one."""
        assert self._client is not None, "start() first"
        c = self.config
        if c.upstream_model:
            body = {**body, "model": c.upstream_model}
        headers = f"x-request-id: {request_id}\r\n".encode() if request_id else b""
        payload = json.dumps(body).encode()
        key = affinity_key(body, c.prefix_chars) if self.policy is Policy.PREFIX_AFFINITY else b""
        tried: set[Replica] = set()
        last: Forwarded | None = None
        for _ in range(c.max_attempts):
            candidates = [r for r in self.pool.available() if r not in tried]
            if not candidates:
                break
            self._turn += 1
            replica = pick(
                self.policy, candidates, turn=self._turn, ring=self.pool.ring, key=key, load_factor=c.load_factor
            )
            tried.add(replica)
            attempt = self._stream if stream else self._once
            result, retry = await attempt(replica, path, payload, headers)
            if not retry:
                return result
            last = result
            log.warning("upstream %s failed before the first byte (%s); trying another", replica.url, result.status)
        if last is not None:
            return last
        return Forwarded(503, _error(503, "no healthy upstream replica for this model", "no_healthy_upstream"))

    def _http(self, r: Replica) -> Client:
        """The keep-alive connections to one replica (a client per replica, kept)."""
        client = self._clients.get(r.url)
        if client is None:
            # A new replica (a new pod's address): drop the clients of those gone.
            current = {replica.url for replica in self.pool.replicas}
            for url in [u for u in self._clients if u not in current]:
                self._clients.pop(url).close()
            c = self.config
            client = Client(r.url, self._auth, timeout_s=c.total_timeout_s, connect_timeout_s=c.connect_timeout_s)
            self._clients[r.url] = client
        return client

    async def _once(self, r: Replica, path: str, body: bytes, headers: bytes) -> tuple[Forwarded, bool]:
        content = bytearray()
        r.outstanding += 1
        r.requests += 1
        try:
            status, error_body = await self._http(r).post(path, body, lambda d, _: content.extend(d), headers)
        except HttpError as exc:
            self.pool.failed(r)
            return Forwarded(502, _error(502, f"{r.url}: {exc}", "upstream_unreachable")), True
        except TimeoutError:
            self.pool.failed(r)
            # The whole answer was late: retrying would double the wait the client set.
            return Forwarded(504, _error(504, f"{r.url} took longer than the total timeout", "upstream_timeout")), False
        finally:
            r.outstanding -= 1
        return self._answered(r, status, bytes(content) if status == 200 else error_body)

    def _answered(self, r: Replica, status: int, content: bytes) -> tuple[Forwarded, bool]:
        """A complete response: relayed as JSON; a 5xx counts against the replica, and
        both 5xx and 429 (that replica is full) are worth another replica's try."""
        if status >= 500:
            self.pool.failed(r)
        elif status != 429:
            self.pool.succeeded(r)
        data = json_object(content)
        if data is None:
            text = content[:200].decode("utf-8", "replace")
            data = _error(502, f"{r.url} answered {status} with a body that is not JSON: {text}", "upstream_error")
            status = 502 if status < 400 else status
        return Forwarded(status, data), status >= 500 or status == 429

    async def _stream(self, r: Replica, path: str, body: bytes, headers: bytes) -> tuple[Forwarded, bool]:
        r.outstanding += 1
        r.requests += 1
        rest = self._events(r, UpstreamStream(self._http(r), path, body, headers))
        try:
            first = await anext(rest)
        except StopAsyncIteration:  # [DONE] straight away: an empty answer, not a failure
            return Forwarded(200), False
        except _Status as answer:  # not a 200: relayed, or another replica tried
            return self._answered(r, answer.status, answer.content)
        except UpstreamFailed as exc:  # nothing reached the client: another replica may answer
            return Forwarded(exc.status, _error(exc.status, str(exc), exc.code)), True
        err = first.error
        if err is not None:
            await rest.aclose()
            status = error_status(err)
            if status >= 500:
                self.pool.failed(r)
            return Forwarded(status, first.data), status >= 500
        return Forwarded(200, first=first, rest=rest), False

    async def _events(self, r: Replica, stream: UpstreamStream) -> AsyncGenerator[Event, None]:
        """The stream's events until [DONE]. Closing this generator early (the client
        left) closes the connection, which is how the upstream learns to stop."""
        finished = False
        silence = self.config.first_token_timeout_s
        try:
            while (event := await stream.next(silence)) is not None:
                if event is DONE:
                    finished = True
                if finished:
                    # Read on to the body's end (it follows at once): a response read to
                    # its end leaves its connection open for the next request.
                    continue
                assert isinstance(event, Event)
                yield event
            status, content = stream.result()
            if status != 200:
                raise _Status(status, content)
            if not finished:
                self.pool.failed(r)
                raise UpstreamFailed(502, f"{r.url} ended the stream without [DONE]")
            self.pool.succeeded(r)
        except HttpError as exc:
            self.pool.failed(r)
            raise UpstreamFailed(502, f"the stream from {r.url} failed: {exc}") from exc
        except TimeoutError as exc:
            self.pool.failed(r)
            raise UpstreamFailed(504, f"{r.url} timed out: no token for {silence}s, or past the total timeout") from exc
        finally:
            r.outstanding -= 1
            stream.close()

    # -- the rest of the Relay interface ---------------------------------------------------

    @property
    def upstream_model(self) -> str | None:
        return self.config.upstream_model

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def stats(self) -> BackendStats:
        now = self.pool.clock()
        replicas = self.pool.replicas
        return BackendStats(
            running=sum(r.outstanding for r in replicas),
            max_running=self.config.max_running,
            upstreams=[
                UpstreamStats(
                    url=r.url,
                    available=r.available(now),
                    outstanding=r.outstanding,
                    requests=r.requests,
                    errors=r.errors,
                    ejections=r.ejections,
                )
                for r in replicas
            ],
        )
