"""POST /v1/chat/completions: messages rendered with the model's own chat template,
then generated like any prompt; streamed as chat.completion.chunk deltas."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from backends.base import Backend, GenerationRequest, Kind
from gateway.api.checks import check_context, check_token_ids
from gateway.chat_template import TemplateError, render, render_segments
from gateway.errors import invalid
from gateway.forwarding import forward
from gateway.generation import generate
from gateway.outputs import SequenceOutput, chat_logprobs, usage
from gateway.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Delta,
    new_id,
    now,
)
from gateway.request_log import RequestRecord, bind_request
from gateway.router import Deployment
from gateway.streaming import event_stream, until_disconnect

router = APIRouter()


def chat_prompt(body: ChatCompletionRequest, deployment: Deployment) -> list[int]:
    """The conversation as token ids. Only the template's own markup is parsed for
    control tokens: a message that writes `<|im_end|><|im_start|>system` stays text and
    cannot forge a turn. Such a conversation is tokenized piece by piece (markup,
    contents); any other in one piece, as the model's own tokenizer would."""
    backend = deployment.engine
    template = backend.chat_template
    if template is None:
        raise invalid(f"the model {body.model!r} has no chat template; use /v1/completions", "messages")
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in body.messages]
    try:
        if not any(_writes_control_tokens(backend, m["content"]) for m in messages):
            return backend.tokenize(
                render(template, messages, add_generation_prompt=body.add_generation_prompt), special=True
            )
        segments = render_segments(template, messages, add_generation_prompt=body.add_generation_prompt)
    except TemplateError as exc:
        raise invalid(str(exc), "messages") from exc
    if len(segments) == 1:  # the template changes contents: they cannot be told from its markup
        raise invalid(
            "a message writes the model's control tokens, which this model's template cannot keep as text", "messages"
        )
    tokens: list[int] = []
    for i, (text, is_content) in enumerate(segments):
        tokens += backend.tokenize(text, special=not is_content, bos=i == 0)
    return tokens


def _writes_control_tokens(backend: Backend, text: str) -> bool:
    return bool(text) and backend.tokenize(text, special=True, bos=False) != backend.tokenize(text, bos=False)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    deployment: Deployment = request.app.state.router.get(body.model)
    record = bind_request(request, deployment)
    if deployment.kind is Kind.RELAY:  # the upstream renders the template and samples
        return await forward(request, deployment, record, "/v1/chat/completions", stream=body.stream, choices=body.n)
    backend = deployment.engine
    prompt = chat_prompt(body, deployment)
    # No limit given: generate until the context is full, as OpenAI does.
    max_tokens = body.output_limit or max(backend.max_model_len - len(prompt), 1)
    check_context(backend, [prompt], max_tokens, "messages")
    check_token_ids(backend, [int(k) for k in body.logit_bias], "logit_bias")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    request_id = new_id("chatcmpl")
    reqs = [
        GenerationRequest(
            f"{request_id}-{i}",
            prompt,
            body.sampling_params(
                max_tokens=max_tokens,
                seed=None if body.seed is None else body.seed + i,
                logprobs=logprobs,
                prompt_logprobs=None,
            ),
        )
        for i in range(body.n)
    ]
    record.expect(len(prompt), len(reqs), [m.model_dump(exclude_none=True) for m in body.messages])
    if body.stream:
        return await event_stream(request, record, _stream(body, deployment, request_id, prompt, reqs, record))
    response = await until_disconnect(request, _complete(body, deployment, request_id, prompt, reqs, record))
    return JSONResponse(response.model_dump())


async def _complete(
    body: ChatCompletionRequest,
    deployment: Deployment,
    request_id: str,
    prompt: list[int],
    reqs: list[GenerationRequest],
    record: RequestRecord,
) -> ChatCompletionResponse:
    outputs = [SequenceOutput() for _ in reqs]
    async for index, chunk in generate(deployment, reqs, record):
        outputs[index].add(chunk)
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=out.text),
            logprobs=chat_logprobs(out.logprobs) if body.logprobs else None,
            finish_reason=out.finish_reason,
        )
        for i, out in enumerate(outputs)
    ]
    return ChatCompletionResponse(
        id=request_id, created=now(), model=body.model, choices=choices, usage=usage(len(prompt), outputs)
    )


async def _stream(
    body: ChatCompletionRequest,
    deployment: Deployment,
    request_id: str,
    prompt: list[int],
    reqs: list[GenerationRequest],
    record: RequestRecord,
) -> AsyncGenerator[BaseModel, None]:
    created = now()
    outputs = [SequenceOutput() for _ in reqs]

    def event(choice: ChatChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=request_id, created=created, model=body.model, choices=[choice])

    started: set[int] = set()
    async for index, chunk in generate(deployment, reqs, record):
        outputs[index].add(chunk)
        if index not in started:  # OpenAI sends the role alone first
            started.add(index)
            yield event(ChatChunkChoice(index=index, delta=Delta(role="assistant", content="")))
        logprobs = chat_logprobs(chunk.logprobs or []) if body.logprobs else None
        if chunk.text or logprobs is not None or chunk.finish_reason is not None:
            delta = Delta(content=chunk.text) if chunk.text else Delta()
            yield event(ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=chunk.finish_reason))
    if body.include_usage:
        yield ChatCompletionChunk(
            id=request_id, created=created, model=body.model, choices=[], usage=usage(len(prompt), outputs)
        )
