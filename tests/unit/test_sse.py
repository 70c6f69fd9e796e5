"""Server-sent events: one event's JSON on one line, whatever the text holds."""

from __future__ import annotations

import json

from pydantic import BaseModel

from gateway.streaming import named_sse, sse


class Text(BaseModel):
    type: str = "delta"
    text: str


# Line ends by str.splitlines (which httpx's aiter_lines follows): JSON carries the
# first three raw, and escapes the rest.
TEXT = "a\u2028b\u2029c\x85d\x0ce\x1cf\rg\nh"


def test_an_event_is_one_line_to_a_client_that_splits_lines_as_python_does() -> None:
    for event in (sse(Text(text=TEXT)), named_sse(Text(text=TEXT)), sse(Text(text=TEXT).model_dump_json().encode())):
        lines = [line for line in event.decode().splitlines() if line]
        data = [line for line in lines if line.startswith("data: ")]
        assert len(data) == 1 and len(lines) == 1 + event.startswith(b"event: "), lines
        assert json.loads(data[0].removeprefix("data: "))["text"] == TEXT
