"""POST /v1/chat/completions: messages rendered with the model's own chat template,
then generated like any prompt; streamed as chat.completion.chunk deltas."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

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
    ChatFinishReason,
    ChatMessage,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
    new_id,
    now,
)
from gateway.request_log import RequestRecord, bind_request
from gateway.router import Deployment
from gateway.streaming import event_stream, until_disconnect
from gateway.tools import ToolFormat, format_for, tool_constraint
from gateway.tools.events import Arguments, CallStart, Content, Event, parse_all

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
    messages = [_template_message(m) for m in body.messages]
    # tool_choice "none": the tools are left out of the prompt, so the model answers in text.
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.calls_tools and body.tools else None
    # Tool definitions and earlier calls are rendered inside the template's markup, so
    # they cannot be kept as text piece by piece: control tokens there are refused.
    for what, param in ((tools, "tools"), ([m.get("tool_calls") for m in messages], "messages")):
        if writes_control_tokens(backend, json.dumps(what, ensure_ascii=False)):
            raise invalid(f"{param} must not write the model's control tokens", param)
    try:
        if not any(writes_control_tokens(backend, m["content"]) for m in messages):
            text = render(template, messages, add_generation_prompt=body.add_generation_prompt, tools=tools)
            return backend.tokenize(text, special=True)
        segments = render_segments(template, messages, add_generation_prompt=body.add_generation_prompt, tools=tools)
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


def _template_message(m: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it (transformers' convention): a call's
    arguments as an object, not OpenAI's JSON text."""
    out: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


# Whether a text writes control tokens, by its digest, per backend (a vocabulary of its
# own). Chat requests resend their system prompt and earlier turns every time, and the
# check tokenizes a text twice on the event loop (~5 ms for a 1,000-token system prompt
# on 2 cores). A digest, not the text's hash(), keys it: the answer guards the prompt.
_CONTROL_SEEN: WeakKeyDictionary[Backend, OrderedDict[bytes, bool]] = WeakKeyDictionary()
_CONTROL_SEEN_MAX = 1024  # texts remembered per backend


def writes_control_tokens(backend: Backend, text: str) -> bool:
    if not text:
        return False
    seen = _CONTROL_SEEN.setdefault(backend, OrderedDict())
    key = hashlib.blake2b(text.encode(), digest_size=16).digest()
    if (known := seen.get(key)) is not None:
        seen.move_to_end(key)
        return known
    writes = backend.tokenize(text, special=True, bos=False) != backend.tokenize(text, bos=False)
    seen[key] = writes
    if len(seen) > _CONTROL_SEEN_MAX:
        seen.popitem(last=False)
    return writes


def _tool_format(body: ChatCompletionRequest, deployment: Deployment) -> ToolFormat | None:
    """The format to parse the answer in, when the model may call tools."""
    if not body.calls_tools:
        return None
    fmt = format_for(deployment.engine.chat_template, deployment.config.tool_parser)
    if fmt is None:
        raise invalid(
            f"the model {body.model!r} has no known tool-call format (its chat template shows none); "
            "set tool_parser in its configuration",
            "tools",
        )
    return fmt


@dataclass(slots=True, frozen=True)
class ChatRun:
    """A chat request made ready for the engine: its sequences and how to read them."""

    request_id: str
    prompt: list[int]
    reqs: list[GenerationRequest]
    fmt: ToolFormat | None  # the tool-call format to parse the output in, when it may call


def prepare(body: ChatCompletionRequest, deployment: Deployment, record: RequestRecord) -> ChatRun:
    """The prompt, the checks, the tool constraint and one GenerationRequest per choice
    (the Responses API prepares its requests here too)."""
    deployment.require_task("generate", "/v1/chat/completions")
    backend = deployment.engine
    prompt = chat_prompt(body, deployment)
    # No limit given: generate until the context is full, as OpenAI does.
    max_tokens = body.output_limit or max(backend.max_model_len - len(prompt), 1)
    check_context(backend, [prompt], max_tokens, "messages")
    check_token_ids(backend, [int(k) for k in body.logit_bias], "logit_bias")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    fmt = _tool_format(body, deployment)
    constraint = tool_constraint(body, fmt, backend) if fmt is not None else None
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
                constraint=constraint,
            ),
        )
        for i in range(body.n)
    ]
    record.expect(len(prompt), len(reqs), [m.model_dump(exclude_none=True) for m in body.messages])
    return ChatRun(request_id, prompt, reqs, fmt)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    deployment: Deployment = request.app.state.router.get(body.model)
    record = bind_request(request, deployment)
    if deployment.kind is Kind.RELAY:  # the upstream renders the template and samples
        return await forward(request, deployment, record, "/v1/chat/completions", stream=body.stream, choices=body.n)
    run = prepare(body, deployment, record)
    if body.stream:
        return await event_stream(request, record, stream_chunks(body, deployment, run, record))
    response = await until_disconnect(request, _complete(body, deployment, run, record))
    return JSONResponse(response.model_dump())


async def _complete(
    body: ChatCompletionRequest, deployment: Deployment, run: ChatRun, record: RequestRecord
) -> ChatCompletionResponse:
    request_id, prompt, reqs, fmt = run.request_id, run.prompt, run.reqs, run.fmt
    outputs = [SequenceOutput() for _ in reqs]
    async for index, chunk in generate(deployment, reqs, record):
        outputs[index].add(chunk)
    choices = []
    for i, out in enumerate(outputs):
        message = AssistantMessage(content=out.text)
        finish: ChatFinishReason | None = out.finish_reason
        if fmt is not None:
            parsed = parse_all(fmt.parser(), out.text)
            calls = [
                ToolCall(id=_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments)) for c in parsed.calls
            ]
            message = AssistantMessage(
                content=parsed.content if parsed.content or not calls else None, tool_calls=calls
            )
            finish = "tool_calls" if calls and finish == "stop" else finish
        logprobs = chat_logprobs(out.logprobs) if body.logprobs else None
        choices.append(ChatChoice(index=i, message=message, logprobs=logprobs, finish_reason=finish))
    return ChatCompletionResponse(
        id=request_id, created=now(), model=body.model, choices=choices, usage=usage(len(prompt), outputs)
    )


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _deltas(events: list[Event]) -> list[Delta]:
    """Parser events as OpenAI's deltas: a call's id, type and name once, then its
    arguments in pieces, each under the call's index."""
    deltas = []
    for e in events:
        match e:
            case Content(text):
                deltas.append(Delta(content=text))
            case CallStart(index, name):
                function = DeltaFunction(name=name, arguments="")
                deltas.append(
                    Delta(tool_calls=[DeltaToolCall(index=index, id=_call_id(), type="function", function=function)])
                )
            case Arguments(index, text):
                deltas.append(Delta(tool_calls=[DeltaToolCall(index=index, function=DeltaFunction(arguments=text))]))
    return deltas


async def stream_chunks(
    body: ChatCompletionRequest, deployment: Deployment, run: ChatRun, record: RequestRecord
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """The run's output as chat.completion.chunk objects: the role first, then content or
    tool-call deltas, the finish reason, and usage last when asked."""
    request_id, prompt, reqs, fmt = run.request_id, run.prompt, run.reqs, run.fmt
    created = now()
    outputs = [SequenceOutput() for _ in reqs]
    parsers = [fmt.parser() for _ in reqs] if fmt is not None else None
    called: set[int] = set()  # the choices that made a call

    def event(choice: ChatChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=request_id, created=created, model=body.model, choices=[choice])

    started: set[int] = set()
    async for index, chunk in generate(deployment, reqs, record):
        outputs[index].add(chunk)
        if index not in started:  # OpenAI sends the role alone first
            started.add(index)
            yield event(ChatChunkChoice(index=index, delta=Delta(role="assistant", content="")))
        logprobs = chat_logprobs(chunk.logprobs or []) if body.logprobs else None
        finish: ChatFinishReason | None = chunk.finish_reason
        if parsers is None:
            deltas = [Delta(content=chunk.text)] if chunk.text else []
        else:
            events = parsers[index].feed(chunk.text) + (parsers[index].finish() if finish is not None else [])
            deltas = _deltas(events)
            if any(isinstance(e, CallStart) for e in events):
                called.add(index)
            finish = "tool_calls" if finish == "stop" and index in called else finish
        if not deltas and (logprobs is not None or finish is not None):
            deltas = [Delta()]
        for j, delta in enumerate(deltas):
            last = j == len(deltas) - 1
            yield event(
                ChatChunkChoice(
                    index=index,
                    delta=delta,
                    logprobs=logprobs if j == 0 else None,
                    finish_reason=finish if last else None,
                )
            )
    if body.include_usage:
        yield ChatCompletionChunk(
            id=request_id, created=created, model=body.model, choices=[], usage=usage(len(prompt), outputs)
        )
