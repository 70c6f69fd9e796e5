"""The Responses API over the chat path: a Responses request becomes a chat request
(instructions, the stored conversation, input items, function tools, text.format),
and the chat path's chunks become output items and the Responses stream's events.

One path for both shapes of answer: a non-streamed response is the last event's
response object, so what a client sees streamed and whole cannot differ."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from gateway.errors import OpenAIError, from_validation, invalid
from gateway.protocol import ChatCompletionChunk, ChatCompletionRequest
from gateway.protocol_responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    IncompleteDetails,
    InputItem,
    MessageItem,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    StreamEvent,
)

# A chat field's name as the Responses request calls it, for errors.
_PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def renamed(err: OpenAIError) -> OpenAIError:
    """A chat-path error with its parameter named as the Responses request names it."""
    param = err.param.split(".")[0] if err.param else ""
    if param in _PARAMS:
        err.param = _PARAMS[param]
    return err


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def conversation(history: list[dict[str, Any]], items: list[InputItem]) -> list[dict[str, Any]]:
    """The stored conversation followed by the new input items, as chat messages: a
    function call joins the assistant turn before it, its output is a tool message."""
    messages = [dict(m) for m in history]
    for item in items:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last["tool_calls"] = [*(last.get("tool_calls") or []), call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return messages


def chat_request(body: ResponsesRequest, messages: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request that generates this response (always streamed, with usage)."""
    if body.instructions:
        messages = [{"role": "system", "content": body.instructions}, *messages]
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
        "parallel_tool_calls": body.parallel_tool_calls,
    }
    if body.max_output_tokens is not None:
        chat["max_completion_tokens"] = body.max_output_tokens
    if body.seed is not None:
        chat["seed"] = body.seed
    tools = body.function_tools()
    if tools:
        chat["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in tools
        ]
    choice = body.tool_choice
    if choice is not None:
        chat["tool_choice"] = (
            choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
        )
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    try:
        return ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:
        err = from_validation(RequestValidationError(exc.errors()))
        param = err.param.split(".")[0] if err.param else None
        raise invalid(err.message, _PARAMS.get(param or "", err.param)) from exc


def initial_response(body: ResponsesRequest, response_id: str) -> ResponseObject:
    """The response as `response.created` shows it: in progress, no output yet."""
    fmt = body.text.format if body.text is not None else None
    choice = body.tool_choice
    return ResponseObject(
        id=response_id,
        created_at=int(time.time()),
        status="in_progress",
        model=body.model,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tools=[t.model_dump(exclude_none=True) for t in body.function_tools()],
        tool_choice=choice.model_dump() if isinstance(choice, FunctionChoice) else choice or "auto",
        parallel_tool_calls=body.parallel_tool_calls,
        text={"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt is not None else {"type": "text"}},
        previous_response_id=body.previous_response_id,
        store=body.store,
        metadata=body.metadata or {},
        user=body.user,
    )


class ResponseBuilder:
    """Turns the chat path's chunks into output items and the stream's events, in
    OpenAI's order: an item is added, filled by deltas, then done, before the next."""

    def __init__(self, response: ResponseObject) -> None:
        self.response = response
        self._seq = 0
        self._open: OutputItem | None = None
        self._calls: dict[int, OutputFunctionCall] = {}  # chat tool-call index -> its item

    def _event(self, type_: str, **fields: Any) -> StreamEvent:
        event = StreamEvent(type=type_, sequence_number=self._seq, **fields)
        self._seq += 1
        return event

    def start(self) -> list[StreamEvent]:
        snapshot = self.response.model_dump()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: ChatCompletionChunk) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if chunk.usage is not None:
            u = chunk.usage
            self.response.usage = ResponseUsage(
                input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens, total_tokens=u.total_tokens
            )
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                events += self._text(delta.content)
            for call in delta.tool_calls or []:
                if call.id is not None:  # a new call: its name comes once, first
                    events += self._close()
                    item = OutputFunctionCall(
                        id=f"fc_{uuid.uuid4().hex}",
                        call_id=call.id,
                        name=call.function.name if call.function and call.function.name else "",
                        arguments="",
                        status="in_progress",
                    )
                    self._calls[call.index] = item
                    events += self._add(item)
                piece = call.function.arguments if call.function else None
                if piece:
                    item = self._calls[call.index]
                    item.arguments += piece
                    events.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            item_id=item.id,
                            output_index=self._index(item),
                            delta=piece,
                        )
                    )
            if choice.finish_reason == "length":
                self.response.status = "incomplete"
                self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        return events

    def finish(self) -> list[StreamEvent]:
        """The last item done, and the response completed (or incomplete, cut at max_output_tokens)."""
        events = self._close()
        if self.response.status == "in_progress":
            self.response.status = "completed"
        kind = "response.completed" if self.response.status == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=self.response.model_dump())]

    def _index(self, item: OutputItem) -> int:
        return next(i for i, x in enumerate(self.response.output) if x is item)

    def _add(self, item: OutputItem) -> list[StreamEvent]:
        self._open = item
        self.response.output.append(item)
        events = [self._event("response.output_item.added", output_index=self._index(item), item=item.model_dump())]
        if isinstance(item, OutputMessage):
            part = OutputText(text="").model_dump()
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=self._index(item),
                    content_index=0,
                    part=part,
                )
            )
        return events

    def _text(self, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        item = self._open
        if not isinstance(item, OutputMessage):
            events += self._close()
            item = OutputMessage(id=f"msg_{uuid.uuid4().hex}", status="in_progress", content=[OutputText(text="")])
            events += self._add(item)
        item.content[0].text += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item.id,
                output_index=self._index(item),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _close(self) -> list[StreamEvent]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self._index(item)
        item.status = "incomplete" if self.response.status == "incomplete" else "completed"
        events = []
        if isinstance(item, OutputMessage):
            text = item.content[0].text
            events += [
                self._event(
                    "response.output_text.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part=item.content[0].model_dump(),
                ),
            ]
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
        events.append(self._event("response.output_item.done", output_index=index, item=item.model_dump()))
        return events


def output_messages(response: ResponseObject) -> list[dict[str, Any]]:
    """The response's output as chat messages, to store after its conversation."""
    text = response.output_text
    calls = [
        {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        for item in response.output
        if isinstance(item, OutputFunctionCall)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message] if text or calls else []
