"""Tool calling for the engines the gateway renders prompts for: which format a model
writes its calls in, the grammar that holds a constrained answer to the tools'
schemas, and the parser that turns its output back into OpenAI's tool calls.
Relays forward `tools` as the client sent them: the upstream does all of this."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from backends.base import Backend, ChatTemplateInfo, Constraint
from gateway.protocol import ChatCompletionRequest, NamedToolChoice
from gateway.tools import hermes, llama3, mistral
from gateway.tools.events import AnswerShape, Parser


@dataclass(frozen=True, slots=True)
class ToolFormat:
    name: str
    marker: str  # written by a chat template that renders calls in this format
    parser: Callable[[], Parser]
    grammar: Callable[[AnswerShape], str]


# In the order a template is matched against them; the names are vLLM's parsers'.
FORMATS = {
    "hermes": ToolFormat("hermes", hermes.OPEN, hermes.HermesParser, hermes.grammar),
    "llama3_json": ToolFormat("llama3_json", llama3.MARKER, llama3.parser, llama3.grammar),
    "mistral": ToolFormat("mistral", mistral.MARKER, mistral.MistralParser, mistral.grammar),
}


def format_for(template: ChatTemplateInfo | None, configured: str | None) -> ToolFormat | None:
    """The configured format, else the one the chat template shows it was trained on."""
    if configured is not None:
        return FORMATS[configured]
    if template is None or "tools" not in template.source:
        return None
    return next((f for f in FORMATS.values() if f.marker in template.source), None)


def tool_constraint(body: ChatCompletionRequest, fmt: ToolFormat, backend: Backend) -> Constraint:
    """What the answer may be: `auto` is free text (or JSON under response_format) or
    calls, constrained from a call's opening on; `required` is one call or more, a
    named choice one call of it."""
    assert body.tools
    choice = body.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    tools = [(t.function.name, t.function.parameters) for t in body.tools if named in (None, t.function.name)]

    def literal(marker: str) -> str:
        ids = backend.tokenize(marker, special=True, bos=False)
        return f"<[{ids[0]}]>" if len(ids) == 1 else json.dumps(marker)

    text = body.constraint  # response_format: what an answer that is not a call must be
    response = json.loads(text.spec) if text is not None and text.kind == "json_schema" else None
    if text is not None and text.kind == "json_object":
        response = {"type": "object"}
    shape = AnswerShape(
        tools,
        required=named is not None or choice == "required",
        parallel=body.parallel_tool_calls and named is None,
        literal=literal,
        response=response,
    )
    spec = fmt.grammar(shape)
    return Constraint("grammar", spec, "tools")
