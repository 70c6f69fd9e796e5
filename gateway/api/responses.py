"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API, run
on the chat path (gateway/responses.py) and kept in the response store when `store`
is on (gateway/responses_store.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from backends.base import Kind
from gateway.api import chat
from gateway.errors import OpenAIError, invalid
from gateway.forwarding import relay_json
from gateway.protocol import ChatCompletionRequest
from gateway.protocol_responses import DeletedResponse, ResponsesRequest, StreamEvent
from gateway.request_log import RequestRecord, bind_request
from gateway.responses import (
    ResponseBuilder,
    chat_request,
    conversation,
    initial_response,
    new_response_id,
    output_messages,
    renamed,
)
from gateway.responses_store import ResponseStore
from gateway.router import Deployment
from gateway.streaming import event_stream, named_sse, until_disconnect

router = APIRouter()


def _not_found(response_id: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(
        404,
        f"no stored response {response_id!r} (never stored, expired or deleted)",
        param=param,
        code="response_not_found",
    )


@router.post("/v1/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    deployment: Deployment = request.app.state.router.get(body.model)
    record = bind_request(request, deployment)
    if deployment.kind is Kind.RELAY:  # the upstream serves the Responses API itself
        if body.stream:
            raise invalid("streamed responses are not relayed yet; ask without stream", "stream")
        return await relay_json(deployment, "/v1/responses", await request.json(), record.request_id)
    deployment.require_task("generate", "/v1/responses")
    store: ResponseStore = request.app.state.responses
    history: list[dict[str, object]] = []
    if body.previous_response_id is not None:
        found = store.get(body.previous_response_id)
        if found is None:
            raise _not_found(body.previous_response_id, "previous_response_id")
        history = found[1]
    messages = conversation(history, body.input_items())
    chat_body = chat_request(body, messages)
    try:
        run = chat.prepare(chat_body, deployment, record)
    except OpenAIError as exc:
        raise renamed(exc) from None
    builder = ResponseBuilder(initial_response(body, new_response_id()))
    events = _events(body, chat_body, deployment, run, record, builder, store, messages)
    if body.stream:
        return await event_stream(request, record, events, frame=named_sse, done=b"")
    await until_disconnect(request, _drain(events))
    return Response(builder.response.model_dump_json(), media_type="application/json")


async def _events(
    body: ResponsesRequest,
    chat_body: ChatCompletionRequest,
    deployment: Deployment,
    run: chat.ChatRun,
    record: RequestRecord,
    builder: ResponseBuilder,
    store: ResponseStore,
    messages: list[dict[str, object]],
) -> AsyncGenerator[StreamEvent, None]:
    for event in builder.start():
        yield event
    async for chunk in chat.stream_chunks(chat_body, deployment, run, record):
        for event in builder.feed(chunk):
            yield event
    for event in builder.finish():
        yield event
    response = builder.response
    if body.store:
        store.put(response.id, response.model_dump(), [*messages, *output_messages(response)])


async def _drain(events: AsyncGenerator[StreamEvent, None]) -> None:
    async for _ in events:
        pass


@router.get("/v1/responses/{response_id}", response_model=None)
async def get_response(response_id: str, request: Request) -> JSONResponse:
    found = request.app.state.responses.get(response_id)
    if found is None:
        raise _not_found(response_id)
    return JSONResponse(found[0])


@router.delete("/v1/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, request: Request) -> DeletedResponse:
    if not request.app.state.responses.delete(response_id):
        raise _not_found(response_id)
    return DeletedResponse(id=response_id)
