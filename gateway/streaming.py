"""Server-sent events, and the watch on the client: a request whose client goes away
is cancelled, down to the engine, whether it streams or not."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gateway.errors import OpenAIError
from gateway.protocol import ErrorBody
from gateway.request_log import RequestRecord

log = logging.getLogger("lightgate")
T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


class ClientDisconnected(Exception):
    pass


# Characters JSON may carry raw that Python's str.splitlines (and httpx's aiter_lines,
# which GuideLLM reads events with) take for line ends, cutting an event's data line
# in two: generated text does hold them. Their UTF-8 bytes occur only inside JSON
# strings, where the escape means the same character.
_LINE_BREAKS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def _one_line(data: bytes) -> bytes:
    for raw, escaped in _LINE_BREAKS:
        data = data.replace(raw, escaped)
    return data


def sse(payload: BaseModel | bytes) -> bytes:
    """One event; bytes are JSON already (an upstream's, forwarded as it came)."""
    data = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
    return b"data: " + _one_line(data) + b"\n\n"


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        # Once the body has been read, the server's next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()


def named_sse(payload: BaseModel | bytes) -> bytes:
    """One event of the Responses API's stream: `event: <type>` before its data; an
    error body becomes its `error` event."""
    if isinstance(payload, ErrorBody):
        detail = payload.error
        data = {"type": "error", "code": detail.code, "message": detail.message, "param": detail.param}
        return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
    body = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
    kind = payload.type if isinstance(payload, BaseModel) else json.loads(body)["type"]  # type: ignore[attr-defined]
    return f"event: {kind}\n".encode() + b"data: " + _one_line(body) + b"\n\n"


async def event_stream(
    request: Request,
    record: RequestRecord,
    events: AsyncGenerator[BaseModel | bytes, None],
    *,
    frame: Callable[[BaseModel | bytes], bytes] = sse,
    done: bytes = DONE,
) -> StreamingResponse:
    """Start streaming once the first event exists, so that errors found before any
    output (a full queue, an unsupported parameter) still get their HTTP status.
    An error after that is an error event, and the record keeps its status."""
    first = await until_disconnect(request, anext(events, None))

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:  # None: an empty stream, [DONE] alone
                yield frame(first)
            async for event in events:
                yield frame(event)
        except OpenAIError as exc:
            record.error_status = exc.status
            yield frame(exc.body())
        except Exception:
            log.exception("error inside a stream")
            record.error_status = 500
            yield frame(OpenAIError(500, "internal server error", code="internal_error").body())
        finally:
            # This also runs when the server cancels the stream on a disconnect; the
            # shield lets the close reach the engine inside that cancelled scope.
            with anyio.CancelScope(shield=True):
                await events.aclose()
        if done:
            yield done

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
