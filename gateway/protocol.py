"""The OpenAI wire protocol: request and response models for /v1/completions,
/v1/chat/completions and /v1/models, and how a request becomes SamplingParams.

Requests are validated here and nowhere else. A check that spans fields raises
`ParamError`, which names the offending parameter so the client's 400 can too."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from backends.base import Constraint, SamplingParams


class ParamError(ValueError):
    """A request field is invalid. Raised inside validators; pydantic keeps it as the
    error's context, and the error handler reads `param` from it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


log = logging.getLogger("lightgate")
_logged: set[str] = set()  # the unknown fields already logged, by name


def _valid_text(value: Any) -> bool:
    """No string inside `value` holds a lone surrogate (it would not encode to UTF-8)."""
    if isinstance(value, str):
        if value.isascii():
            return True
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_valid_text(k) and _valid_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_valid_text(v) for v in value)
    return True


class _Request(BaseModel):
    # Fields outside OpenAI's spec and ours are ignored, as vLLM does (clients such as
    # LangChain send extras a server does not know), and logged once per name. Fields of
    # the spec that cannot be honoured are declared, and refused when set (`REFUSED`).
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # Clients send explicit nulls for "not set"; let the field's default apply.
        if isinstance(data, dict):
            known = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
            for name in {k for k, v in data.items() if v is not None} - known - _logged:
                _logged.add(name)
                log.warning("ignoring the request field %r (in %s): Lightgate does not use it", name, cls.__name__)
            return {k: v for k, v in data.items() if v is not None}
        return data


class _Body(_Request):
    """A whole request body (its parts are `_Request`s): its text is checked once."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        # JSON may escape a lone UTF-16 surrogate ("\ud800"), which no tokenizer can
        # encode: a client's error, named, not a 500.
        if isinstance(data, dict):
            for name, value in data.items():
                if not _valid_text(value):
                    raise ParamError(f"{name} holds a lone UTF-16 surrogate: text must be valid Unicode", name)
        return data


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the schema is enforced either way


class ResponseFormat(_Request):
    """OpenAI's `response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ParamError("response_format of type json_schema needs a json_schema", "response_format")
        return self


class StructuredOutputs(_Request):
    """vLLM's `structured_outputs` extension: exactly one of a JSON Schema, any JSON
    object, a regex, a choice of strings, or a grammar (Lark, or llama.cpp's GBNF)."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        given = [
            k for k in ("json_", "json_object", "regex", "choice", "grammar") if getattr(self, k) not in (None, False)
        ]
        if len(given) != 1:
            raise ParamError(
                "structured_outputs takes exactly one of json, json_object, regex, choice, grammar",
                "structured_outputs",
            )
        if self.choice is not None and not self.choice:
            raise ParamError("structured_outputs.choice must not be empty", "structured_outputs")
        if isinstance(self.json_, str):
            try:
                json.loads(self.json_)
            except ValueError as exc:
                raise ParamError(f"structured_outputs.json is not JSON: {exc}", "structured_outputs") from exc
        return self

    def constraint(self) -> Constraint:
        param = "structured_outputs"
        if self.json_ is not None:
            schema = self.json_ if isinstance(self.json_, str) else json.dumps(self.json_)
            return Constraint("json_schema", schema, param)
        if self.regex is not None:
            return Constraint("regex", self.regex, param)
        if self.choice is not None:
            return Constraint("choice", json.dumps(self.choice), param)
        if self.grammar is not None:
            return Constraint("grammar", self.grammar, param)
        return Constraint("json_object", "", param)


class _SamplingFields(_Body):
    """Fields shared by completions and chat."""

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] = Field(default_factory=list)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] = Field(default_factory=dict)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what an engine's 64-bit seed holds
    user: str | None = None
    # Extensions that vLLM and llama.cpp's server also accept.
    top_k: int = Field(0, ge=-1, lt=2**31)  # llama.cpp's sampler takes a C int
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    # Structured outputs: OpenAI's field, or vLLM's extension (one of the two).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str]) -> list[str]:
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ParamError("at most 4 stop sequences are allowed", "stop")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            # The text stream holds back up to a stop's length while it may still match.
            raise ParamError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters", "stop")
        if any(s == "" for s in stops):
            raise ParamError("stop sequences must not be empty", "stop")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float]) -> dict[str, float]:
        if len(v) > MAX_LOGIT_BIAS:
            # Each entry is applied at every step of the sequence, slowing the batch it shares.
            raise ParamError(f"logit_bias may hold at most {MAX_LOGIT_BIAS} tokens", "logit_bias")
        for key, value in v.items():
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ParamError(f"logit_bias keys must be token ids, got {key!r}", "logit_bias")
            if not -100.0 <= value <= 100.0:
                raise ParamError("logit_bias values must be in [-100, 100]", "logit_bias")
        return v

    @model_validator(mode="after")
    def _stream_options(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options is only allowed when stream is true", "stream_options")
        return self

    @model_validator(mode="after")
    def _structured(self) -> _SamplingFields:
        constraint = self.constraint
        if constraint is None:
            return self
        if (
            self.structured_outputs is not None
            and self.response_format is not None
            and self.response_format.type != "text"
        ):
            raise ParamError("give response_format or structured_outputs, not both", "structured_outputs")
        # A finished grammar allows only end-of-sequence: banning it would leave nothing to draw.
        if self.ignore_eos:
            raise ParamError(f"ignore_eos cannot be combined with {constraint.param}", "ignore_eos")
        if self.min_tokens:
            raise ParamError(f"min_tokens cannot be combined with {constraint.param}", "min_tokens")
        return self

    @property
    def constraint(self) -> Constraint | None:
        """What the output must match, from whichever field asked."""
        if self.structured_outputs is not None:
            return self.structured_outputs.constraint()
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return Constraint("json_object")
        assert fmt.json_schema is not None
        return Constraint("json_schema", json.dumps(fmt.json_schema.schema_))

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling_params(
        self,
        *,
        max_tokens: int,
        seed: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None,
        constraint: Constraint | None = None,
    ) -> SamplingParams:
        """The sampling of one sequence; `constraint` is one the route made (tool calls)."""
        if self.min_tokens > max_tokens:
            raise ParamError(f"min_tokens ({self.min_tokens}) exceeds max_tokens ({max_tokens})", "min_tokens")
        stop = self.stop if isinstance(self.stop, list) else [self.stop]
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            min_p=self.min_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias={int(k): v for k, v in self.logit_bias.items()},
            stop=stop,
            seed=seed,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            constraint=constraint or self.constraint,
        )


Prompt = str | list[str] | list[int] | list[list[int]]

# Bounds on what one request may ask of the engine, so that one body cannot hold the
# batch: sequences (prompts x n, or best_of), a stop's length, logit_bias entries, and
# chat messages (OpenAI's own limit is 2048).
MAX_SEQUENCES = 256
MAX_STOP_CHARS = 1024
MAX_LOGIT_BIAS = 1024
MAX_MESSAGES = 2048


class CompletionRequest(_SamplingFields):
    prompt: Prompt
    suffix: str | None = None
    max_tokens: int = Field(16, ge=0)
    best_of: int | None = Field(None, ge=1, le=128)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Prompt) -> Prompt:
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ParamError("prompt must not be empty", "prompt")
        if isinstance(v, list) and v and isinstance(v[0], int) and any(t < 0 for t in v):
            raise ParamError("token ids must be >= 0", "prompt")
        return v

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        prompts = len(self.prompt) if isinstance(self.prompt, list) and not isinstance(self.prompt[0], int) else 1
        if prompts * max(self.n, self.best_of or 1) > MAX_SEQUENCES:
            raise ParamError(f"prompts x n (or best_of) may be at most {MAX_SEQUENCES} sequences", "prompt")
        if self.best_of is not None:
            if self.best_of < self.n:
                raise ParamError(f"best_of ({self.best_of}) must be >= n ({self.n})", "best_of")
            if self.stream and self.best_of > self.n:
                raise ParamError("best_of > n cannot be streamed", "best_of")
        if self.max_tokens == 0 and not self.echo:
            raise ParamError("max_tokens must be >= 1 unless echo is true", "max_tokens")
        return self


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class _OnlySet(BaseModel):
    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's deltas carry only what changed: {"content": "x"}, not {"role": null, ...}.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # the arguments are enforced either way, when a call is constrained


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(_Request):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # the call a tool message answers

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ParamError("a message with role 'tool' needs the tool_call_id it answers", "messages")
        if self.tool_calls and self.role != "assistant":
            raise ParamError("only assistant messages carry tool_calls", "messages")
        for call in self.tool_calls or []:
            try:
                json.loads(call.function.arguments)
            except ValueError as exc:
                raise ParamError(f"tool call {call.id!r}: arguments are not JSON: {exc}", "messages") from exc
        return self

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    # OpenAI's fields that no backend here honours: refused when set, never ignored.
    # (`metadata`, `prompt_cache_key` and `safety_identifier` are accepted: they ask
    # nothing of the output. `store` may be false, `modalities` text, `service_tier`
    # auto or default: what is done anyway.)
    REFUSED: ClassVar[dict[str, str]] = {
        "functions": "the deprecated `functions` is not supported; send `tools`",
        "function_call": "the deprecated `function_call` is not supported; send `tool_choice`",
        "audio": "audio output is not supported",
        "prediction": "predicted outputs are not supported",
        "web_search_options": "web search is not supported",
        "reasoning_effort": "these models do not reason: reasoning_effort cannot be honoured",
        "verbosity": "verbosity cannot be honoured",
    }
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    add_generation_prompt: bool = True
    # Accepted without effect on the output (see REFUSED above).
    metadata: dict[str, str] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    store: Literal[False] = False
    modalities: list[Literal["text"]] | None = None
    service_tier: Literal["auto", "default"] | None = None
    # Declared so that they are refused by name rather than ignored as unknown.
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None

    @model_validator(mode="after")
    def _refused(self) -> ChatCompletionRequest:
        for name, why in self.REFUSED.items():
            if getattr(self, name) is not None:
                raise ParamError(why, name)
        return self

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ParamError("top_logprobs requires logprobs to be true", "top_logprobs")
        return self

    @model_validator(mode="after")
    def _tools(self) -> ChatCompletionRequest:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ParamError("tools must have distinct function names", "tools")
        choice = self.tool_choice
        if choice not in (None, "none") and not names:
            raise ParamError("tool_choice needs tools", "tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ParamError(f"tool_choice names {choice.function.name!r}, which is not in tools", "tool_choice")
        if self.calls_tools and (self.ignore_eos or self.min_tokens):
            # A finished call allows only end-of-sequence: banning it would leave nothing to draw.
            raise ParamError("ignore_eos and min_tokens cannot be combined with tool calls", "tool_choice")
        constraint = self.constraint
        if self.calls_tools and constraint is not None and constraint.kind not in ("json_schema", "json_object"):
            # The answer that is not a call is held to the format; beside calls, only JSON is.
            raise ParamError(
                f"with tools, {constraint.param} takes a JSON schema or any JSON object; or set tool_choice to 'none'",
                constraint.param,
            )
        return self

    @property
    def calls_tools(self) -> bool:
        """The model may (auto) or must (required, named) answer with tool calls."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# -- responses ---------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprobOut):
    top_logprobs: list[TopLogprobOut] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] = Field(default_factory=list)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] = Field(default_factory=list)


ChatFinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaFunction(_OnlySet):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_OnlySet):
    """A piece of a streamed call: the first carries its id, type and name, the rest
    pieces of the arguments' JSON text, all under the call's index."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class Delta(_OnlySet):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lightgate"
    root: str
    max_model_len: int | None = None
    backend: str
    variant: str | None = None
    # Lightgate's: the model's state (loading, ready, restarting, failed, dead,
    # draining) and the memory its engine holds (peak RSS of its worker or process).
    state: str | None = None
    memory_bytes: int | None = None
    gpu_memory_bytes: dict[str, int] | None = None  # by GPU index, for a worker that holds some (NVML)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class TokenizeRequest(_Body):
    """POST /tokenize (vLLM's extension): the model's token ids for a text, counted as
    a completion's `usage.prompt_tokens` counts them (a BOS included, if the model has one)."""

    model: str
    prompt: str


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(_Body):
    model: str
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
