"""Mistral's tool calls (its v3 tokenizer's format, Mistral-7B-Instruct-v0.3 and kin):
a `[TOOL_CALLS]` token, then a JSON list of calls,

    [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]

after optional text. The parser streams each call of the list as it comes (its name,
then its arguments in pieces); the grammar holds the list to the tools' schemas."""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.tools.events import (
    JSON_OPTIONS,
    AnswerShape,
    CallText,
    Content,
    Event,
    JsonValueEnd,
    call_schemas,
    held,
    started,
)

MARKER = "[TOOL_CALLS]"
_SEPARATORS = re.compile(r"^[\s,]*")


class MistralParser:
    """Content until `[TOOL_CALLS]`, then the list: each element a call. What follows
    the list, or a list that does not parse, is given back as content."""

    def __init__(self) -> None:
        self.buffer = ""
        self.in_list = False
        self.opened = False  # the list's `[` came
        self.closed = False  # its `]` came
        self.calls = 0
        self.call: CallText | None = None
        self.scan = JsonValueEnd()

    def feed(self, text: str) -> list[Event]:
        self.buffer += text
        events: list[Event] = []
        if not self.in_list:
            at = self.buffer.find(MARKER)
            end = at if at >= 0 else len(self.buffer) - held(self.buffer, MARKER)
            shown = self.buffer[:end].rstrip()
            if shown:
                events.append(Content(shown))
            if at < 0:
                self.buffer = self.buffer[len(shown) :]
                return events
            self.in_list, self.buffer = True, self.buffer[at + len(MARKER) :]
        while not self.closed:
            if not self.opened:
                rest = self.buffer.lstrip()
                if not rest or rest[0] != "[":
                    return events  # nothing yet, or not a list (given back at the end)
                self.opened, self.buffer = True, rest[1:]
            if self.call is None:
                rest = _SEPARATORS.sub("", self.buffer)
                if not rest:
                    self.buffer = ""
                    return events
                if rest[0] == "]":
                    self.closed, self.buffer = True, rest[1:]
                    break
                self.call, self.scan, self.buffer = CallText(self.calls), JsonValueEnd(), rest
            stop = self.scan.feed(self.buffer)
            piece, self.buffer = (self.buffer, "") if stop is None else (self.buffer[:stop], self.buffer[stop:])
            events += self._count(self.call.add(piece))
            if stop is None:
                return events
            events += self._end_call()
        return events

    def finish(self) -> list[Event]:
        events = self.feed("")
        if self.call is not None:  # cut off inside a call
            events += self._end_call()
        rest, self.buffer = self.buffer, ""
        if self.in_list and not self.opened:
            rest = MARKER + rest
        if rest.strip() or (rest and not self.calls):
            events.append(Content(rest))
        return events

    def _count(self, events: list[Event]) -> list[Event]:
        self.calls += started(events)
        return events

    def _end_call(self) -> list[Event]:
        assert self.call is not None
        call, self.call = self.call, None
        ended = call.end()
        return [Content(call.text)] if ended is None else self._count(ended)


def grammar(shape: AnswerShape) -> str:
    """The marker and a list of calls of `tools` (one unless `parallel`) valid against
    their schemas; before it, unless `required`, optional text; with `response`, the
    answer that is not a list of calls is JSON matching that schema."""
    bodies = call_schemas(shape.tools)
    calls: dict[str, Any] = {"type": "array", "items": {"anyOf": bodies}, "minItems": 1}
    if not shape.parallel:
        calls["maxItems"] = 1
    rules = [f'calls: {shape.literal(MARKER)} " "? list', f"list: %json {json.dumps({**calls, **JSON_OPTIONS})}"]
    if shape.required:
        return "\n".join(["start: calls", *rules])
    if shape.response is not None:
        return "\n".join(
            ["start: calls | answer", *rules, f"answer: %json {json.dumps({**shape.response, **JSON_OPTIONS})}"]
        )
    return "\n".join(["start: TEXT | TEXT? calls", *rules, "TEXT: /(?s:.+)/"])
