"""What a tool-call parser makes of a model's output as it streams: content, the start
of a call (its name), and pieces of a call's arguments. Every format's parser yields
these; the chat route shapes them into OpenAI's message or deltas."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol


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
