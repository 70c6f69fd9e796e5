"""One streaming request against any OpenAI-compatible server, timed from the client's
side: when it was sent, when each content chunk arrived, what `usage` said, how
it ended. Everything else in loadtest/ is built from these records.

The HTTP client is leanhttp/client.py's: the client's own CPU is what caps a load
generator on a small machine, and that module says how it keeps it low."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from leanhttp.client import Client, HttpError

Api = Literal["completions", "chat"]


@dataclass(slots=True)
class Prompt:
    text: str
    tokens: int | None = None  # its length in the model's tokens, when the source knows it


@dataclass(slots=True)
class RequestSpec:
    """What every request of a run asks for (the prompt is chosen per request)."""

    model: str
    api: Api = "completions"
    max_tokens: int = 128
    ignore_eos: bool = True  # fixed output lengths, on servers that honour it
    temperature: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # added to every body as is

    def body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
            body["min_tokens"] = self.max_tokens  # the name vLLM-style servers read
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body | self.extra

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"


@dataclass(slots=True)
class RequestRecord:
    """One request, as the client saw it. Times are seconds on the run's clock."""

    index: int
    start: float
    end: float = 0.0
    status: int = 0  # HTTP status; 0 when no response came
    error: str | None = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried text
    prompt_tokens: int | None = None  # from usage
    output_tokens: int | None = None  # from usage; falls back to the number of text chunks

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and bool(self.chunk_times)

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tokens(self) -> int:
        return self.output_tokens if self.output_tokens is not None else len(self.chunk_times)

    def itls(self) -> list[float]:
        """Inter-token latencies. A server may put several tokens in one chunk: when
        usage counts more tokens than chunks arrived, each gap between chunks is
        shared evenly by the tokens it brought, so the list has one entry per token
        after the first and sums to the time from first to last chunk."""
        gaps = [b - a for a, b in itertools.pairwise(self.chunk_times)]
        extra = self.tokens - len(self.chunk_times)
        if not gaps or extra <= 0:
            return gaps
        per_gap = (self.tokens - 1) / len(gaps)  # tokens each later chunk brought, on average
        out: list[float] = []
        carried = 0.0
        for gap in gaps:
            carried += per_gap
            k = max(1, round(carried))
            carried -= k
            out.extend([gap / k] * k)
        return out

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (last chunk - first chunk) / (tokens - 1)."""
        if len(self.chunk_times) < 2 or self.tokens < 2:
            return None
        return (self.chunk_times[-1] - self.chunk_times[0]) / (self.tokens - 1)

    def to_json(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: that deep-copies every chunk time, and a run's
        # report writes a hundred thousand of these.
        out = {name: getattr(self, name) for name in self.__slots__}
        out.update(ttft=self.ttft, e2e=self.e2e, tpot=self.tpot, ok=self.ok)
        return out


async def send(client: Client, spec: RequestSpec, prompt: Prompt, index: int, t0: float) -> RequestRecord:
    """Send one streaming request and time it; never raises for what the server does."""
    record = RequestRecord(index=index, start=time.perf_counter() - t0)
    events = _EventReader(record, t0)
    try:
        record.status, body = await client.post(spec.path, json.dumps(spec.body(prompt.text)).encode(), events.feed)
        if record.status != 200:
            record.error = f"HTTP {record.status}: {_error_message(body.decode(errors='replace'))}"
    except (HttpError, TimeoutError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.end = time.perf_counter() - t0
    if record.error is None and not record.chunk_times:
        record.error = "the stream carried no text"
    return record


class _EventReader:
    """Splits a stream's body into SSE lines as the bytes arrive and reads each event."""

    __slots__ = ("pending", "record", "t0")

    def __init__(self, record: RequestRecord, t0: float) -> None:
        self.record, self.t0, self.pending = record, t0, b""

    def feed(self, data: bytes, arrived: float) -> None:
        if self.record.error is not None:
            return  # a malformed stream is read to its end and ignored, so the connection stays usable
        *lines, self.pending = (self.pending + data).split(b"\n")
        try:
            for line in lines:
                if line.startswith(b"data: {"):
                    _read_event(json.loads(line[6:]), arrived - self.t0, self.record)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError) as exc:
            self.record.error = f"malformed stream: {exc!r}"


def _read_event(event: dict[str, Any], now: float, record: RequestRecord) -> None:
    if "error" in event:  # an error inside a stream that had begun
        err = event["error"]
        record.error = f"in-stream error: {err.get('message', err) if isinstance(err, dict) else err}"
        return
    usage = event.get("usage")
    if usage:
        record.prompt_tokens = usage.get("prompt_tokens")
        record.output_tokens = usage.get("completion_tokens")
    for choice in event.get("choices") or []:
        text = choice.get("text")
        if text is None:
            text = (choice.get("delta") or {}).get("content")
        if text:
            record.chunk_times.append(now)
            return  # one arrival per event, however many choices it holds


def _error_message(body: str) -> str:
    try:
        error = json.loads(body)["error"]
        return str(error.get("message", error))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return body[:200]
