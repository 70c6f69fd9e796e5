"""What a tool-call parser makes of a model's output as it streams: content, the start
of a call (its name), and pieces of a call's arguments. Every format's parser yields
these; the chat route shapes them into OpenAI's message or deltas. Also what the
formats share: one call's JSON object read as it streams (`CallText`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from backends.structured import JSON_WHITESPACE


@dataclass(frozen=True, slots=True)
class Content:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    index: int  # the call's place in the answer, from 0
    name: str


@dataclass(frozen=True, slots=True)
class Arguments:
    index: int
    text: str  # the next piece of the arguments' JSON text


Event = Content | CallStart | Arguments


class Parser(Protocol):
    """One sequence's output, fed as it comes."""

    def feed(self, text: str) -> list[Event]: ...

    def finish(self) -> list[Event]:
        """The output ended: whatever was held back."""
        ...


@dataclass(slots=True)
class ParsedCall:
    name: str
    arguments: str = ""


@dataclass(slots=True)
class Parsed:
    """A whole answer gathered from its events."""

    content: str = ""
    calls: list[ParsedCall] = field(default_factory=list)

    def add(self, events: list[Event]) -> None:
        for event in events:
            match event:
                case Content(text):
                    self.content += text
                case CallStart(_, name):
                    self.calls.append(ParsedCall(name))
                case Arguments(index, text):
                    self.calls[index].arguments += text


def parse_all(parser: Parser, text: str) -> Parsed:
    parsed = Parsed()
    parsed.add(parser.feed(text))
    parsed.add(parser.finish())
    return parsed


class JsonValueEnd:
    """Finds where a JSON value that starts with `{` or `[` ends, fed a piece at a time
    (strings and escapes tracked, so a brace inside a string is not structure)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.began = False

    def feed(self, text: str) -> int | None:
        """How much of `text` belongs to the value, if the value ends inside it."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
                self.began = True
            elif ch in "}]":
                self.depth -= 1
                if self.began and self.depth == 0:
                    return i + 1
        return None


def dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


class CallText:
    """One call's JSON object, `{"name": ..., KEY: {...}}`, read as it streams: its name
    once it is whole, then its arguments piece by piece. When the keys come in another
    order nothing can stream early, and the call comes whole at its end."""

    def __init__(self, index: int, key: str = "arguments") -> None:
        self.index, self.key = index, key
        self.head = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"' + re.escape(key) + r'"\s*:\s*')
        self.text = ""
        self.named = False  # the name was sent
        self.args_at = 0  # where the arguments begin in `text`
        self.args_sent = 0  # how much of them was sent
        self.args_done = False
        self.scan = JsonValueEnd()

    def add(self, text: str) -> list[Event]:
        self.text += text
        events: list[Event] = []
        if not self.named:
            head = self.head.match(self.text)
            if head is None:
                return events
            self.named, self.args_at = True, head.end()
            events.append(CallStart(self.index, json.loads(f'"{head.group(1)}"')))
        if not self.args_done:
            new = self.text[self.args_at + self.args_sent :]
            if not self.args_sent:  # whitespace before the value is not part of it
                skipped = len(new) - len(new.lstrip())
                self.args_at, new = self.args_at + skipped, new.lstrip()
                if new and new[0] not in "{[":  # not an object: sent whole when the call ends
                    return events
            end = self.scan.feed(new)
            piece = new if end is None else new[:end]
            self.args_done = end is not None
            if piece:
                self.args_sent += len(piece)
                events.append(Arguments(self.index, piece))
        return events

    def end(self, source: str | None = None) -> list[Event] | None:
        """The call's text is all there (`source`: the JSON to read, where it is not
        `text` as it came): the events still owed, or None when it was no call."""
        source = self.text if source is None else source
        if self.named:
            if self.args_sent:
                return []
            try:  # arguments that were not an object: whatever the JSON says
                return [Arguments(self.index, dumps(json.loads(source)[self.key]))]
            except (ValueError, KeyError, TypeError):
                return []
        try:
            value = json.loads(source)
            name, arguments = value["name"], value[self.key]
            if not isinstance(name, str) or set(value) != {"name", self.key}:
                raise TypeError(name)  # JSON, but not a call (an answer under response_format)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return [CallStart(self.index, name), Arguments(self.index, dumps(arguments))]


def started(events: list[Event]) -> int:
    """How many calls these events start."""
    return sum(isinstance(e, CallStart) for e in events)


def held(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


# Whitespace between JSON tokens in a call as in a response_format's JSON (bounded, so
# that a model cannot loop on it).
JSON_OPTIONS = {"x-guidance": {"whitespace_pattern": JSON_WHITESPACE}}


def call_schemas(tools: Sequence[tuple[str, dict[str, Any]]], key: str = "arguments") -> list[dict[str, Any]]:
    """The JSON Schema of a call of each tool (name, parameters' schema): its name, and
    its arguments under `key`, valid against the tool's schema."""
    return [
        {
            "type": "object",
            "properties": {"name": {"const": name}, key: parameters},
            "required": ["name", key],
            "additionalProperties": False,
        }
        for name, parameters in tools
    ]


@dataclass(frozen=True, slots=True)
class AnswerShape:
    """What a format's grammar must allow: calls of `tools` (name, parameters' schema),
    at least one if `required`, several if `parallel`; otherwise free text, or JSON
    matching `response` (response_format) when given. `literal` writes a marker as
    the grammar should match it (the model's own token for it, where it has one)."""

    tools: Sequence[tuple[str, dict[str, Any]]]
    required: bool
    parallel: bool
    literal: Callable[[str], str]
    response: dict[str, Any] | None = None
