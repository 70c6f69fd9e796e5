"""The Hermes tool-call format, which Qwen2.5 is trained on: each call a JSON object
between `<tool_call>` and `</tool_call>` on lines of their own,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

after optional text, calls one per line, then the end of the turn. The parser streams
a call's name once it is whole and its arguments piece by piece; the grammar is what
a constrained answer may be (llguidance's Lark, JSON Schema inside `%json`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from gateway.tools.events import Arguments, CallStart, Content, Event, JsonValueEnd, dumps

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FENCE = "```json"  # a bare call may come as a Markdown JSON block
# The head of a call, up to where its arguments begin.
HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
# Between JSON tokens: one space, or a newline and some indentation (as for response_format).
JSON_WHITESPACE = r"(?: |\n[ \t]{0,20})?"


def _held(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class HermesParser:
    """Content until `<tool_call>`, then calls. Trailing whitespace of content is held
    until more content follows: the newline before a call is not content. A call whose
    text is not the expected JSON is given back as content, markers included.

    An answer that is one bare JSON object, no markers (or one Markdown JSON block of
    it), is a call too: small Qwen models often write calls so (llama.cpp's server
    reads these as calls as well), and the `auto` grammar holds such an answer to the
    tools' schemas."""

    def __init__(self) -> None:
        self.buffer = ""  # received, not yet handled
        self.fresh = True  # nothing but whitespace came yet
        self.bare = False  # the answer is a bare JSON call
        self.fenced = False  # in a Markdown block
        self.in_call = False
        self.calls = 0  # calls started
        self.call = ""  # the current call's text after OPEN
        self.named = False  # the current call's name was sent
        self.args_at = 0  # where its arguments begin in `call`
        self.args_sent = 0  # how much of them was sent
        self.args_done = False
        self.scan = JsonValueEnd()

    def feed(self, text: str) -> list[Event]:
        self.buffer += text
        events: list[Event] = []
        while True:
            head = self.buffer.lstrip()
            if self.fresh and head:
                if FENCE.startswith(head) and head != FENCE:
                    return events  # maybe the start of a block: wait
                self.fresh, self.fenced = False, head.startswith(FENCE)
                if self.fenced or head.startswith("{"):
                    self.bare, self.buffer = True, head.removeprefix(FENCE)
                    self._begin_call()
            if self.bare:
                self.call, self.buffer = self.call + self.buffer, ""
                return events + self._progress()
            if not self.in_call:
                at = self.buffer.find(OPEN)
                end = at if at >= 0 else len(self.buffer) - _held(self.buffer, OPEN)
                text_part = self.buffer[:end]
                shown = text_part.rstrip()
                if shown:
                    events.append(Content(shown))
                if at < 0:
                    self.buffer = text_part[len(shown) :] + self.buffer[end:]
                    return events
                self.buffer = self.buffer[at + len(OPEN) :]
                self._begin_call()
            else:
                at = self.buffer.find(CLOSE)
                end = at if at >= 0 else len(self.buffer) - _held(self.buffer, CLOSE)
                self.call += self.buffer[:end]
                self.buffer = self.buffer[end:]
                events += self._progress()
                if at < 0:
                    return events
                self.buffer = self.buffer[len(CLOSE) :]
                events += self._end_call()

    def finish(self) -> list[Event]:
        events = self.feed("")
        if self.in_call:  # cut off inside a call (max_tokens): what it had, as it was
            self.call, self.buffer = self.call + self.buffer, ""
            events += self._progress()
            events += self._end_call(closed=self.bare)  # a bare call ends with the answer
        rest, self.buffer = self.buffer, ""
        if rest and (rest.strip() or not self.calls):
            events.append(Content(rest))
        return events

    def _begin_call(self) -> None:
        self.in_call, self.call, self.named = True, "", False
        self.args_at = self.args_sent = 0
        self.args_done = False
        self.scan = JsonValueEnd()

    def _progress(self) -> list[Event]:
        events: list[Event] = []
        if not self.named:
            head = HEAD.match(self.call)
            if head is None:
                return events
            self.named, self.args_at = True, head.end()
            events.append(CallStart(self.calls, json.loads(f'"{head.group(1)}"')))
            self.calls += 1
        if not self.args_done:
            new = self.call[self.args_at + self.args_sent :]
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
                events.append(Arguments(self.calls - 1, piece))
        return events

    def _end_call(self, *, closed: bool = True) -> list[Event]:
        self.in_call = False
        if self.named:
            if self.args_sent or not closed:
                return []
            try:  # arguments that were not an object: whatever the JSON says
                value = json.loads(self.call.rstrip().removesuffix("```") if self.fenced else self.call)
                return [Arguments(self.calls - 1, dumps(value["arguments"]))]
            except (ValueError, KeyError, TypeError):
                return []
        text = self.call.rstrip().removesuffix("```") if self.fenced else self.call
        try:
            value = json.loads(text)
            name, arguments = value["name"], value["arguments"]
            if not isinstance(name, str) or set(value) != {"name", "arguments"}:
                raise TypeError(name)  # JSON, but not a call (an answer under response_format)
        except (ValueError, KeyError, TypeError, AttributeError):
            if self.bare:
                return [Content((FENCE if self.fenced else "") + self.call)]
            return [Content(OPEN + self.call + (CLOSE if closed else ""))]
        self.calls += 1
        return [CallStart(self.calls - 1, name), Arguments(self.calls - 1, dumps(arguments))]


def grammar(
    tools: Sequence[tuple[str, dict[str, Any]]],
    *,
    required: bool,
    parallel: bool,
    literal: Callable[[str], str],
    response: dict[str, Any] | None = None,
) -> str:
    """What an answer may be: calls of `tools` (name, parameters' schema) with arguments
    valid against their schema, after free text unless a call is `required`; several
    calls if `parallel`. With a `response` schema (response_format), the answer that
    is not a call is JSON matching it instead of free text. `literal` writes a marker
    as the grammar should match it (the model's own token for it, where it has one)."""
    bodies: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, parameters in tools
    ]
    options = {"x-guidance": {"whitespace_pattern": JSON_WHITESPACE}}
    # The newline after a call may lead to another call or to the end: a model that
    # writes it without wanting a second call can still stop there.
    calls = 'call ("\\n" call)* "\\n"?' if parallel else 'call "\\n"?'
    rules = [
        f'call: {literal(OPEN)} "\\n" body "\\n" {literal(CLOSE)}',
        f"body: %json {json.dumps({'anyOf': bodies, **options})}",
        f'fenced: "{FENCE}\\n" body "\\n```"',
    ]
    if required:
        return "\n".join([f"start: {calls}", *rules])
    if response is not None:
        # A bare call and the answer are both JSON objects: one schema for both, the
        # parser tells them apart (a call has exactly `name` and `arguments`).
        answer = {"anyOf": [*bodies, response], **options}
        return "\n".join([f"start: {calls} | fenced | answer", *rules, f"answer: %json {json.dumps(answer)}"])
    return "\n".join(
        [
            f"start: TEXT | TEXT? {calls} | body | fenced",
            *rules,
            # Text does not begin with `{` or a JSON block (an answer that does is a bare
            # call), and cannot hold the model's own token for the marker (a regex never
            # matches a special token), so a call begins only through `call`, `body` or
            # `fenced`. A model whose marker is plain text could spell a call inside
            # TEXT: the parser still finds it, but nothing held it to its schema.
            r"TEXT: /\s*[^{\s](?s:.*)/ & ~/\s*```json(?s:.*)/",
        ]
    )
