"""Server-sent events from an OpenAI-compatible upstream, split and parsed once: the
gateway forwards each event's JSON as it came, and reads it for tokens and errors."""

from __future__ import annotations

import json
from typing import Any

from backends.relay import Event

DONE = object()  # the `data: [DONE]` sentinel


def json_object(raw: bytes) -> dict[str, Any] | None:
    """`raw` as a JSON object, or None when it is not one (an upstream's HTML error page...)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def parse_block(block: bytes) -> Event | object | None:
    """One event (the lines between blank lines): its data as an Event, DONE, or None
    for a comment or keep-alive. llama.cpp's server writes `error: {...}` lines."""
    payload: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:") or line.startswith(b"error:"):
            value = line.split(b":", 1)[1]
            payload.append(value[1:] if value.startswith(b" ") else value)
    if not payload:
        return None
    raw = b"\n".join(payload)
    if raw == b"[DONE]":
        return DONE
    data = json_object(raw)
    if data is None:
        text = raw[:200].decode("utf-8", "replace")
        data = {"error": {"message": f"the upstream sent an event that is not a JSON object: {text}"}}
        raw = json.dumps(data).encode()
    elif block.startswith(b"error:") and "error" not in data:
        data = {"error": data}
        raw = json.dumps(data).encode()
    return Event(raw, data)


class Splitter:
    """Events from a body arriving in arbitrary pieces; CRLF line ends become LF."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> list[Event | object]:
        buffer = self.buffer + chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        out: list[Event | object] = []
        while (end := buffer.find(b"\n\n")) >= 0:
            parsed = parse_block(buffer[:end])
            buffer = buffer[end + 2 :]
            if parsed is not None:
                out.append(parsed)
        self.buffer = buffer
        return out

    def close(self) -> list[Event | object]:
        """A last event the body ended without its blank line."""
        rest, self.buffer = self.buffer.strip(), b""
        parsed = parse_block(rest) if rest else None
        return [] if parsed is None else [parsed]
