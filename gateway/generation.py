"""Runs the sequences of one request on a deployment: takes an admission slot, fans
the choices out to the backend, merges their chunks, and turns engine exceptions
into client errors. Leaving the iterator early cancels every sequence in the engine."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager

from backends.base import BackendError, Chunk, EngineDead, EngineRestarting, GenerationRequest, UnsupportedFeature
from gateway.admission import QueueFull, retry_after
from gateway.errors import OpenAIError, invalid
from gateway.request_log import RequestRecord
from gateway.router import Deployment
from gateway.tenants import Tenant


@asynccontextmanager
async def admission_slot(deployment: Deployment, record: RequestRecord, reserve: int = 0) -> AsyncIterator[None]:
    """Hold one of the model's admission slots (waiting in line, or a 429 at arrival for a
    wait past the deadline), telling the record how long the wait was. A key with a
    tokens-per-minute limit reserves `reserve` tokens first (prompt + max_tokens) and is
    charged what the request really used when it ends."""
    tenant = record.tenant
    charge = None
    if tenant is not None and tenant.tokens is not None:
        charge = tenant.tokens.take(reserve)
        if charge is None:
            raise tokens_refused(tenant, reserve, record)
    queued = time.perf_counter()
    try:
        await deployment.admission.acquire(record.flow, record.max_wait_s)
    except QueueFull as exc:
        if charge is not None and tenant is not None and tenant.tokens is not None:
            tenant.tokens.settle(charge, 0)
        record.refusal = exc.code
        raise OpenAIError(
            429,
            f"the model {deployment.name!r} is overloaded: {exc}; retry after the Retry-After header's seconds",
            code=exc.code,
            headers={"Retry-After": str(retry_after(exc.retry_after_s))},
        ) from exc
    started = time.perf_counter()
    record.admitted(started - queued)
    try:
        yield
    finally:
        deployment.admission.release(time.perf_counter() - started)
        if charge is not None and tenant is not None and tenant.tokens is not None:
            tenant.tokens.settle(charge, record.prompt_tokens + record.output_tokens)


def tokens_refused(tenant: Tenant, reserve: int, record: RequestRecord) -> OpenAIError:
    window = tenant.tokens
    assert window is not None
    record.refusal = "tokens_per_minute"
    wait = window.wait_for(reserve)
    if math.isinf(wait):
        message = (
            f"the request needs {reserve} tokens (prompt + max_tokens), more than the "
            f"{window.limit} tokens per minute of the key {tenant.name!r}; lower max_tokens"
        )
        return OpenAIError(429, message, code="tokens_per_minute")
    message = (
        f"the key {tenant.name!r} has {window.remaining()} of its {window.limit} tokens per minute left and the "
        f"request needs {reserve} (prompt + max_tokens); retry after the Retry-After header's seconds"
    )
    return OpenAIError(429, message, code="tokens_per_minute", headers={"Retry-After": str(retry_after(wait))})


async def generate(
    deployment: Deployment, requests: list[GenerationRequest], record: RequestRecord
) -> AsyncIterator[tuple[int, Chunk]]:
    """Yields (sequence index, chunk) until every sequence has finished, and tells
    the request's record when it got a slot and what each chunk carried."""
    with engine_errors(deployment):
        reserve = record.prompt_tokens + sum(r.params.max_tokens for r in requests)
        for r in requests:
            r.priority = record.flow.rank
        async with admission_slot(deployment, record, reserve):
            if len(requests) == 1:
                async with aclosing(deployment.engine.generate(requests[0])) as stream:
                    async for chunk in stream:
                        record.on_chunk(0, chunk)
                        yield 0, chunk
            else:
                async for index, chunk in _merged(deployment, requests):
                    record.on_chunk(index, chunk)
                    yield index, chunk


@contextmanager
def engine_errors(deployment: Deployment) -> Iterator[None]:
    """An engine's exceptions as the client's errors: what it cannot do is a 400, a dead
    engine a 503 (and the model leaves service), any other failure a 500."""
    try:
        yield
    except UnsupportedFeature as exc:
        raise invalid(str(exc), exc.param, code="unsupported_feature") from exc
    except EngineRestarting as exc:
        raise restarting(deployment, exc) from exc
    except EngineDead as exc:
        deployment.died(str(exc))
        message = f"the model {deployment.name!r} is unavailable: {exc}; the gateway must be restarted"
        raise OpenAIError(503, message, code="engine_dead") from exc
    except BackendError as exc:
        raise OpenAIError(500, f"the {deployment.backend.name} engine failed: {exc}", code="engine_error") from exc


def restarting(deployment: Deployment, exc: EngineRestarting) -> OpenAIError:
    message = f"the model {deployment.name!r} is unavailable: {exc}"
    return OpenAIError(503, message, code="engine_restarting", headers={"Retry-After": "1"})


async def _merged(deployment: Deployment, requests: list[GenerationRequest]) -> AsyncIterator[tuple[int, Chunk]]:
    out: asyncio.Queue[tuple[int, Chunk | BaseException]] = asyncio.Queue()

    async def pump(index: int, req: GenerationRequest) -> None:
        try:
            async with aclosing(deployment.engine.generate(req)) as stream:
                async for chunk in stream:
                    await out.put((index, chunk))
        except Exception as exc:
            await out.put((index, exc))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        unfinished = len(tasks)
        while unfinished:
            index, item = await out.get()
            if isinstance(item, BaseException):
                raise item
            if item.finish_reason is not None:
                unfinished -= 1
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
