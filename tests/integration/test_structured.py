"""Structured outputs on the real SmolLM2 model, through the official openai client:
JSON that matches a schema (the SDK's own `parse` with a Pydantic model), any JSON
object, vLLM's regex / choice / grammar extras, on chat and on completions,
streamed or not, many sequences masked in one batch; and the errors: a schema the
grammar library cannot enforce, fields that cannot go together."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import numpy as np
import numpy.typing as npt
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, Field

from backends.base import Constraint
from tests.conftest import FAST, SMOL
from tests.server import RunningServer


class City(BaseModel):
    """Bounded fields: a small model may repeat a digit forever where nothing stops it."""

    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int = Field(ge=0, le=100_000_000)


CITY_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {
        "name": "city",
        "strict": True,
        "schema": {**City.model_json_schema(), "additionalProperties": False},
    },
}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Describe the city of Paris."}]


def test_the_sdk_parses_into_a_pydantic_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(model=SMOL, messages=ASK, response_format=City, max_tokens=120, temperature=0)
    [choice] = r.choices
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)


def test_sampled_sequences_masked_in_one_batch_all_match(gateway: RunningServer) -> None:
    """Eight sampled sequences (n=4 twice, at once) decode together, each with its own
    grammar state; beside them a free sequence is unaffected."""

    async def run() -> tuple[list[openai.types.chat.chat_completion.Choice], str, str]:
        client = openai.AsyncOpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
        free = {"model": SMOL, "messages": ASK, "max_tokens": 24, "temperature": 0}
        alone = (await client.chat.completions.create(**free)).choices[0].message.content or ""  # type: ignore[call-overload]
        constrained = {**free, "max_tokens": 120, "temperature": 0.9, "n": 4, "response_format": CITY_FORMAT}
        a, b, beside = await asyncio.gather(
            client.chat.completions.create(**constrained, seed=1),
            client.chat.completions.create(**constrained, seed=2),
            client.chat.completions.create(**free),  # type: ignore[call-overload]
        )
        return [*a.choices, *b.choices], alone, beside.choices[0].message.content or ""

    choices, alone, beside = asyncio.run(run())
    assert beside == alone
    assert len(choices) == 8
    for choice in choices:
        assert choice.finish_reason == "stop", choice.message.content  # bounded fields: every output ends
        City.model_validate_json(choice.message.content or "")


def test_a_streamed_json_object_parses(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Reply with a JSON object with the keys name and colour for a cat."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
        stream=True,
    )
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    assert isinstance(json.loads(text), dict)


def test_completions_take_response_format_and_structured_outputs(client: openai.OpenAI) -> None:
    def complete(prompt: str, **extra: object) -> openai.types.CompletionChoice:
        r = client.completions.create(model=SMOL, prompt=prompt, max_tokens=40, temperature=0, extra_body=extra)
        return r.choices[0]

    city = complete("Paris as JSON:", response_format=CITY_FORMAT)
    City.model_validate_json(city.text)
    code = complete("A part number:", structured_outputs={"regex": "[A-Z]{3}-[0-9]{4}"})
    assert re.fullmatch("[A-Z]{3}-[0-9]{4}", code.text) and code.finish_reason == "stop"
    answer = complete("Is the sky blue? Answer:", structured_outputs={"choice": ["yes", "no", "maybe"]})
    assert answer.text in {"yes", "no", "maybe"}
    lark = complete(
        "Greet someone:", structured_outputs={"grammar": 'start: "Hello, " NAME "!"\nNAME: /[A-Z][a-z]{1,10}/'}
    )
    assert re.fullmatch(r"Hello, [A-Z][a-z]{1,10}!", lark.text)
    gbnf = complete("Count:", structured_outputs={"grammar": 'root ::= [0-9] ("," [0-9]){2}'})  # llama.cpp's GBNF
    assert re.fullmatch(r"[0-9](,[0-9]){2}", gbnf.text)


def test_an_output_cut_by_max_tokens_says_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=SMOL, messages=ASK, response_format=CITY_FORMAT, max_tokens=5)
    assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}},
                }
            },
            "response_format",
        ),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs"),
        ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
        ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos"),
        ({"response_format": {"type": "json_object"}, "min_tokens": 3}, "min_tokens"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_what_cannot_be_enforced_is_a_400_naming_the_field(
    client: openai.OpenAI, body: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SMOL, messages=ASK, max_tokens=8, extra_body=body)
    assert str(caught.value.param).startswith(param), caught.value.body


def test_an_engine_without_grammars_refuses_instead_of_ignoring(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=FAST, messages=ASK, max_tokens=8, response_format={"type": "json_object"})
    assert caught.value.param == "response_format" and caught.value.code == "unsupported_feature"


def test_a_grammar_is_compiled_once_per_model_and_follows_a_history_back_and_forth(gateway: RunningServer) -> None:
    backend = gateway.router.get(SMOL).engine
    grammars = backend._grammars  # type: ignore[attr-defined]
    constraint = Constraint("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))
    first = grammars.processor(constraint)
    assert grammars.compiled(constraint)
    second = grammars.processor(constraint)
    assert second.matcher is not first.matcher  # a copy per sequence: their states are apart
    doc = backend.tokenize('{"a": 12}', bos=False)
    row = _row(backend.vocab_size)
    first(doc[:3], row)
    assert row[doc[3]] == 0.0 and (row == float("-inf")).sum() > 0.9 * len(row)
    second(doc, _row(backend.vocab_size))  # the other one is where the document ends
    first(doc[:1], _row(backend.vocab_size))  # back: a speculative step kept fewer tokens
    assert first.consumed == doc[:1]
    off = _row(backend.vocab_size)
    first([*doc[:4], backend.tokenize("x", bos=False)[0]], off)  # not a number after '{"a": ': left alone
    assert (off == 0.0).all()


def _row(size: int) -> npt.NDArray[np.float32]:
    return np.zeros(size, dtype=np.float32)
