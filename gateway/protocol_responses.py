"""The OpenAI wire protocol of /v1/responses: the request (input items, instructions,
text.format, function tools), the response object with its output items, and the
stream's events. How a request becomes a chat request is gateway/responses.py's job."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from gateway.protocol import ParamError, _Body, _Request

# -- the request -------------------------------------------------------------------


class InputText(_Request):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(_Request):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None

    @model_validator(mode="after")
    def _json(self) -> FunctionCallItem:
        try:
            json.loads(self.arguments)
        except ValueError as exc:
            raise ParamError(f"function call {self.call_id!r}: arguments are not JSON: {exc}", "input") from exc
        return self


class FunctionCallOutputItem(_Request):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem
_ITEMS: dict[str, type[MessageItem] | type[FunctionCallItem] | type[FunctionCallOutputItem]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


class FunctionTool(_Request):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class FunctionChoice(_Request):
    type: Literal["function"]
    name: str


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ParamError("text.format of type json_schema needs a schema", "text.format")
        return self


class TextConfig(_Request):
    format: TextFormat | None = None


class ResponsesRequest(_Body):
    # Fields of OpenAI's Responses API that nothing here can honour: refused when set.
    REFUSED: ClassVar[dict[str, str]] = {
        "background": "background responses are not supported",
        "conversation": "conversations are not supported; chain responses with previous_response_id",
        "prompt": "prompt templates are not supported",
        "reasoning": "these models do not reason: reasoning cannot be honoured",
        "include": "include is not supported",
        "max_tool_calls": "max_tool_calls is not supported",
        "top_logprobs": "logprobs are not supported on /v1/responses; use /v1/chat/completions",
    }
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool = True
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    truncation: Literal["disabled"] = "disabled"  # "auto" would drop turns silently
    service_tier: Literal["auto", "default"] | None = None
    seed: int | None = None  # an extension, as on chat
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    reasoning: Any = None
    include: list[str] | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _refused(self) -> ResponsesRequest:
        for name, why in self.REFUSED.items():
            value = getattr(self, name)
            if value is not None and value is not False and value != []:
                raise ParamError(why, name)
        return self

    def input_items(self) -> list[InputItem]:
        """`input` as items: a string is one user message."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        items: list[InputItem] = []
        for i, raw in enumerate(self.input):
            kind = raw.get("type", "message")
            cls = _ITEMS.get(kind)
            if cls is None:
                raise ParamError(f"input[{i}]: items of type {kind!r} are not supported", "input")
            try:
                items.append(cls.model_validate(raw))
            except ValueError as exc:
                raise ParamError(f"input[{i}]: {exc}", "input") from exc
        return items

    def function_tools(self) -> list[FunctionTool]:
        out = []
        for i, raw in enumerate(self.tools or []):
            if raw.get("type") != "function":
                raise ParamError(f"tools[{i}]: only function tools are supported, not {raw.get('type')!r}", "tools")
            out.append(FunctionTool.model_validate(raw))
        return out


# -- the response ------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float
    top_p: float
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] = Field(default_factory=dict)
    incomplete_details: IncompleteDetails | None = None
    error: dict[str, Any] | None = None
    truncation: str = "disabled"
    background: bool = False
    user: str | None = None

    @property
    def output_text(self) -> str:
        return "".join(p.text for item in self.output if isinstance(item, OutputMessage) for p in item.content)


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class StreamEvent(BaseModel):
    """One server-sent event of a streamed response: `type` and its own fields."""

    model_config = {"extra": "allow"}
    type: str
    sequence_number: int
