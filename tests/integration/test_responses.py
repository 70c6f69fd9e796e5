"""/v1/responses on Qwen2.5-Coder-0.5B-Instruct through a real gateway and the official
openai client: text, instructions, `text.format` parsed by the SDK, function tools and
their outputs fed back (as items, and through previous_response_id), the stream as
`client.responses.stream` consumes it, the store (GET, DELETE, 404s, a restart), and
the errors. Greedy decoding throughout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam
from pydantic import BaseModel, Field

from gateway.responses_store import ResponseStore
from tests.conftest import QWEN
from tests.server import RunningServer

GREEDY: dict[str, Any] = {"temperature": 0}
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)


class Report(BaseModel):
    celsius: int = Field(ge=-90, le=60)
    summary: str = Field(max_length=80)


@pytest.fixture(scope="module")
def client(qwen_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=qwen_server.v1, api_key="unused", max_retries=0)


def test_text_in_text_out_with_instructions_and_usage(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=QWEN,
        instructions="Answer in French, one word.",
        input="How do you say hello?",
        max_output_tokens=10,
        **GREEDY,
    )
    assert r.status == "completed" and r.object == "response" and r.id.startswith("resp_")
    assert "bonjour" in r.output_text.lower()
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert r.usage is not None and r.usage.output_tokens >= 1
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Answer in French, one word." and r.max_output_tokens == 10


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    r = client.responses.create(model=QWEN, input="Count from 1 to 100.", max_output_tokens=5, **GREEDY)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens" and r.usage and r.usage.output_tokens == 5


def test_the_sdk_parses_text_format(client: openai.OpenAI) -> None:
    r = client.responses.parse(model=QWEN, input="Name a big city in Japan.", text_format=City, **GREEDY)
    assert isinstance(r.output_parsed, City) and r.output_parsed.country.lower() == "japan"
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"


def test_a_required_call_then_its_output_through_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=QWEN, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required", **GREEDY
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert "paris" in json.loads(call.arguments)["city"].lower() and call.call_id.startswith("call_")
    # The stored conversation carries the call; the client sends only its output.
    answer = client.responses.parse(
        model=QWEN,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21, "sky": "sunny"}'}],
        tools=[WEATHER],
        tool_choice="none",
        text_format=Report,
        **GREEDY,
    )
    assert isinstance(answer.output_parsed, Report) and answer.output_parsed.celsius == 21
    assert answer.previous_response_id == first.id


def test_calls_and_outputs_as_input_items(client: openai.OpenAI) -> None:
    """The whole conversation sent as items (store off): the call and its output."""
    items: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"celsius": 17, "sky": "rain"}'},
    ]
    r = client.responses.parse(
        model=QWEN,
        input=items,
        tools=[WEATHER],
        tool_choice="none",
        text_format=Report,
        store=False,
        **GREEDY,
    )
    assert isinstance(r.output_parsed, Report) and r.output_parsed.celsius == 17
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_the_stream_as_the_sdk_consumes_it(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=QWEN,
        input="What is the weather in Rome?",
        tools=[WEATHER],
        tool_choice="required",
        **GREEDY,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    [call] = final.output
    assert call.type == "function_call" and "rome" in json.loads(call.arguments)["city"].lower()
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert pieces == call.arguments

    with client.responses.stream(model=QWEN, input="Count from 1 to 5.", max_output_tokens=30, **GREEDY) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text and "1" in text and final.usage is not None


def test_streamed_events_are_named_on_the_wire(qwen_server: RunningServer) -> None:
    body = {"model": QWEN, "input": "Hi", "max_output_tokens": 3, "stream": True, **GREEDY}
    with httpx.stream("POST", qwen_server.v1 + "/responses", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas] and names[-1] == "response.incomplete"
    assert "[DONE]" not in "".join(lines)


def test_the_store_gets_deletes_and_404s(client: openai.OpenAI, qwen_server: RunningServer) -> None:
    r = client.responses.create(model=QWEN, input="Say yes.", max_output_tokens=3, **GREEDY)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    client.responses.delete(r.id)
    for call in (lambda: client.responses.retrieve(r.id), lambda: client.responses.delete(r.id)):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=QWEN, input="x", previous_response_id="resp_nope")
    assert err.value.param == "previous_response_id"


def test_the_store_keeps_responses_across_restarts_and_drops_old_ones(tmp_path: Path) -> None:
    path = str(tmp_path / "r.sqlite")
    store = ResponseStore(path, ttl_s=3600, max_entries=2)
    for i in range(3):
        store.put(f"resp_{i}", {"id": f"resp_{i}"}, [{"role": "user", "content": str(i)}])
    store.close()
    reopened = ResponseStore(path, ttl_s=3600, max_entries=2)
    assert reopened.get("resp_0") is None  # past max_entries, the oldest went
    assert reopened.get("resp_2") == ({"id": "resp_2"}, [{"role": "user", "content": "2"}])
    expired = ResponseStore(path, ttl_s=1e-9, max_entries=2)
    assert expired.get("resp_2") is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}, "input"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x" * 30000}, "input"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(qwen_server: RunningServer, body: dict[str, Any], param: str) -> None:
    r = httpx.post(qwen_server.v1 + "/responses", json={"model": QWEN, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_a_missing_model_and_a_chat_path_error_named_for_responses(qwen_server: RunningServer) -> None:
    assert httpx.post(qwen_server.v1 + "/responses", json={"model": "nope", "input": "x"}).status_code == 404
    # Refused by the chat path (prompt and output over the context), named as the
    # Responses request names the field.
    r = httpx.post(qwen_server.v1 + "/responses", json={"model": QWEN, "input": "x", "max_output_tokens": 10**6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
