"""Runs the sequences of one request on a deployment: takes an admission slot, fans
the choices out to the backend, merges their chunks, and turns engine exceptions
into client errors. Leaving the iterator early cancels every sequence in the engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager

from backends.base import BackendError, Chunk, EngineDead, GenerationRequest, UnsupportedFeature
from gateway.admission import QueueFull
from gateway.errors import OpenAIError, invalid
from gateway.request_log import RequestRecord
from gateway.router import Deployment


@asynccontextmanager
async def admission_slot(deployment: Deployment, record: RequestRecord) -> AsyncIterator[None]:
    """Hold one of the model's admission slots (waiting in line, or a 429 past the
    queue), telling the record how long the wait was."""
    queued = time.perf_counter()
    try:
        await deployment.admission.acquire()
    except QueueFull as exc:
        raise OpenAIError(
            429,
            f"the model {deployment.name!r} is overloaded: {exc}; retry shortly",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from exc
    record.admitted(time.perf_counter() - queued)
    try:
        yield
    finally:
        deployment.admission.release()


async def generate(
    deployment: Deployment, requests: list[GenerationRequest], record: RequestRecord
) -> AsyncIterator[tuple[int, Chunk]]:
    """Yields (sequence index, chunk) until every sequence has finished, and tells
    the request's record when it got a slot and what each chunk carried."""
    with engine_errors(deployment):
        async with admission_slot(deployment, record):
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
    except EngineDead as exc:
        deployment.died(str(exc))
        message = f"the model {deployment.name!r} is unavailable: {exc}; the gateway must be restarted"
        raise OpenAIError(503, message, code="engine_dead") from exc
    except BackendError as exc:
        raise OpenAIError(500, f"the {deployment.backend.name} engine failed: {exc}", code="engine_error") from exc


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
