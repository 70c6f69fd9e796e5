"""Llama 3's JSON tool calls (its 3.1 and 3.2 chat templates): the whole answer is one
call, `{"name": "get_weather", "parameters": {"city": "Paris"}}`, after an optional
`<|python_tag|>`; Meta's format has no parallel calls. Parsed by the Hermes parser
with markers off (hermes.py), held by a grammar of the same shape as Hermes' bare
call."""

from __future__ import annotations

import json

from gateway.tools.events import JSON_OPTIONS, AnswerShape, call_schemas
from gateway.tools.hermes import HermesParser

KEY = "parameters"
PREFIX = "<|python_tag|>"
MARKER = '"parameters": dictionary of argument name'  # what Meta's templates tell the model


def parser() -> HermesParser:
    return HermesParser(key=KEY, prefix=PREFIX, marked=False)


def grammar(shape: AnswerShape) -> str:
    """One call of `tools` valid against its schema, or (unless `required`) free text
    that does not begin with `{`, or (with `response`) JSON matching that schema.
    `parallel` changes nothing: the format has one call an answer."""
    bodies = call_schemas(shape.tools, KEY)
    call = f"call: {shape.literal(PREFIX)}? body"
    body = f"body: %json {json.dumps({'anyOf': bodies, **JSON_OPTIONS})}"
    if shape.required:
        return "\n".join(["start: call", call, body])
    if shape.response is not None:
        answer = {"anyOf": [*bodies, shape.response], **JSON_OPTIONS}
        return "\n".join(["start: call | answer", call, body, f"answer: %json {json.dumps(answer)}"])
    return "\n".join(["start: TEXT | call", call, body, r"TEXT: /\s*[^{\s](?s:.*)/"])
