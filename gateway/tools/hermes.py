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

from gateway.tools.events import JSON_OPTIONS, AnswerShape, CallText, Content, Event, call_schemas, held, started

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FENCE = "```json"  # a bare call may come as a Markdown JSON block


class HermesParser:
    """Content until `<tool_call>`, then calls. Trailing whitespace of content is held
    until more content follows: the newline before a call is not content. A call whose
    text is not the expected JSON is given back as content, markers included.

    An answer that is one bare JSON object, no markers (or one Markdown JSON block of
    it), is a call too: small Qwen models often write calls so (llama.cpp's server
    reads these as calls as well), and the `auto` grammar holds such an answer to the
    tools' schemas. With `marked` off and `key` "parameters", that bare call alone is
    Llama 3's JSON format (llama3.py), after its optional `prefix` token."""

    def __init__(self, *, key: str = "arguments", prefix: str = "", marked: bool = True) -> None:
        self.key, self.prefix, self.marked = key, prefix, marked
        self.buffer = ""  # received, not yet handled
        self.fresh = True  # nothing but whitespace came yet
        self.bare = False  # the answer is a bare JSON call
        self.fenced = False  # in a Markdown block
        self.in_call = False
        self.calls = 0  # calls started
        self.call = CallText(0, key)

    def feed(self, text: str) -> list[Event]:
        self.buffer += text
        events: list[Event] = []
        while True:
            head = self.buffer.lstrip()
            if self.fresh and head:
                if any(m.startswith(head) for m in (FENCE, self.prefix) if m):
                    return events  # maybe the start of a block or of the prefix: wait
                self.fresh, self.fenced = False, head.startswith(FENCE)
                if self.prefix and head.startswith(self.prefix):
                    head = head.removeprefix(self.prefix).lstrip()
                if self.fenced or head.startswith("{"):
                    self.bare, self.buffer = True, head.removeprefix(FENCE)
                    self._begin_call()
            if self.bare:
                text, self.buffer = self.buffer, ""
                return events + self._add(text)
            if not self.in_call:
                at = self.buffer.find(OPEN) if self.marked else -1
                end = at if at >= 0 else len(self.buffer) - (held(self.buffer, OPEN) if self.marked else 0)
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
                end = at if at >= 0 else len(self.buffer) - held(self.buffer, CLOSE)
                text, self.buffer = self.buffer[:end], self.buffer[end:]
                events += self._add(text)
                if at < 0:
                    return events
                self.buffer = self.buffer[len(CLOSE) :]
                events += self._end_call()

    def finish(self) -> list[Event]:
        events = self.feed("")
        if self.in_call:  # cut off inside a call (max_tokens): what it had, as it was
            text, self.buffer = self.buffer, ""
            events += self._add(text)
            events += self._end_call(closed=self.bare)  # a bare call ends with the answer
        rest, self.buffer = self.buffer, ""
        if rest and (rest.strip() or not self.calls):
            events.append(Content(rest))
        return events

    def _begin_call(self) -> None:
        self.in_call, self.call = True, CallText(self.calls, self.key)

    def _add(self, text: str) -> list[Event]:
        events = self.call.add(text)
        self.calls += started(events)
        return events

    def _end_call(self, *, closed: bool = True) -> list[Event]:
        self.in_call = False
        raw = self.call.text
        events = self.call.end(raw.rstrip().removesuffix("```") if self.fenced else None)
        if events is None:  # not a call: given back as it came
            if self.bare:
                return [Content((FENCE if self.fenced else "") + raw)]
            return [Content(OPEN + raw + (CLOSE if closed else ""))]
        self.calls += started(events)
        return events


def grammar(shape: AnswerShape) -> str:
    """What an answer may be: calls of `tools` (name, parameters' schema) with arguments
    valid against their schema, after free text unless a call is `required`; several
    calls if `parallel`. With a `response` schema (response_format), the answer that
    is not a call is JSON matching it instead of free text. `literal` writes a marker
    as the grammar should match it (the model's own token for it, where it has one)."""
    bodies = call_schemas(shape.tools)
    # The newline after a call may lead to another call or to the end: a model that
    # writes it without wanting a second call can still stop there.
    calls = 'call ("\\n" call)* "\\n"?' if shape.parallel else 'call "\\n"?'
    rules = [
        f'call: {shape.literal(OPEN)} "\\n" body "\\n" {shape.literal(CLOSE)}',
        f"body: %json {json.dumps({'anyOf': bodies, **JSON_OPTIONS})}",
        f'fenced: "{FENCE}\\n" body "\\n```"',
    ]
    if shape.required:
        return "\n".join([f"start: {calls}", *rules])
    if shape.response is not None:
        # A bare call and the answer are both JSON objects: one schema for both, the
        # parser tells them apart (a call has exactly `name` and `arguments`).
        answer = {"anyOf": [*bodies, shape.response], **JSON_OPTIONS}
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
