"""Runs the sequences of one request on a deployment: takes an admission slot, fans
the choices out to the backend, merges their chunks, and turns engine exceptions
into client errors. Leaving the iterator early cancels every sequence in the engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from backends.base import BackendError, Chunk, GenerationRequest, UnsupportedFeature
from gateway.errors import OpenAIError, invalid
from gateway.limits import QueueFull
from gateway.request_log import RequestRecord
from gateway.router import Deployment


async def generate(
    deployment: Deployment, requests: list[GenerationRequest], record: RequestRecord
) -> AsyncIterator[tuple[int, Chunk]]:
    """Yields (sequence index, chunk) until every sequence has finished, and tells
    the request's record when it got a slot and what each chunk carried."""
    try:
        queued = time.perf_counter()
        async with deployment.admission.slot():
            record.admitted(time.perf_counter() - queued)
            if len(requests) == 1:
                async with aclosing(deployment.backend.generate(requests[0])) as stream:
                    async for chunk in stream:
                        record.on_chunk(0, chunk)
                        yield 0, chunk
            else:
                async for index, chunk in _merged(deployment, requests):
                    record.on_chunk(index, chunk)
                    yield index, chunk
    except QueueFull as exc:
        raise OpenAIError(
            429,
            f"the model {deployment.name!r} is overloaded: {exc}; retry shortly",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from exc
    except UnsupportedFeature as exc:
        raise invalid(str(exc), exc.param, code="unsupported_feature") from exc
    except BackendError as exc:
        raise OpenAIError(500, f"the {deployment.backend.name} engine failed: {exc}", code="engine_error") from exc


async def _merged(deployment: Deployment, requests: list[GenerationRequest]) -> AsyncIterator[tuple[int, Chunk]]:
    out: asyncio.Queue[tuple[int, Chunk | BaseException]] = asyncio.Queue()

    async def pump(index: int, req: GenerationRequest) -> None:
        try:
            async with aclosing(deployment.backend.generate(req)) as stream:
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
