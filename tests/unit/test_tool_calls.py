"""Tool calls without a model: the Hermes parser (streamed in any split, it finds what
the whole text holds), the request checks on tools and tool messages, and the
grammar that holds a call to its schema, run through llguidance on a byte vocabulary."""

from __future__ import annotations

import json
from typing import Any

import llguidance
import pytest

from backends.base import ChatTemplateInfo
from gateway.protocol import ChatCompletionRequest
from gateway.tools import FORMATS, format_for
from gateway.tools.events import AnswerShape, Parsed, ParsedCall, parse_all
from gateway.tools.hermes import HermesParser, grammar
from tests.unit.test_protocol import param_of

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "note": "a}b\\"{"}}\n</tool_call>'
CASES: list[tuple[str, Parsed]] = [
    ("Hello there", Parsed("Hello there")),
    (CALL, Parsed("", [ParsedCall("get_weather", '{"city": "Paris", "note": "a}b\\"{"}')])),
    (
        'Let me check.\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"n": [1, {"k": 2}]}}\n</tool_call>',
        Parsed("Let me check.", [ParsedCall("a", "{}"), ParsedCall("b", '{"n": [1, {"k": 2}]}')]),
    ),
    # Keys in the other order: nothing can stream early, the call comes whole at its end.
    (
        '<tool_call>\n{"arguments": {"q": 1}, "name": "late"}\n</tool_call>',
        Parsed("", [ParsedCall("late", '{"q": 1}')]),
    ),
    # Not a call after all: given back as content, markers included.
    ("<tool_call>\nnot json\n</tool_call> ok", Parsed("<tool_call>\nnot json\n</tool_call> ok")),
    # Cut by max_tokens inside the arguments: the call as far as it went.
    ('<tool_call>\n{"name": "cut", "arguments": {"city": "Par', Parsed("", [ParsedCall("cut", '{"city": "Par')])),
    ("a < b and <tool", Parsed("a < b and <tool")),
    # A bare JSON call, no markers (small Qwen models write these); bare JSON that is no call.
    (
        ' {"name": "get_weather", "arguments": {"city": "Rome"}}',
        Parsed("", [ParsedCall("get_weather", '{"city": "Rome"}')]),
    ),
    ('{"city": "Rome"}', Parsed('{"city": "Rome"}')),
    (
        '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Rome"}\n}\n```',
        Parsed("", [ParsedCall("get_weather", '{"city": "Rome"}')]),
    ),
    ("```json\n[1, 2]\n```", Parsed("```json\n[1, 2]\n```")),
    ("``", Parsed("``")),
    ("```python\nprint(1)\n```", Parsed("```python\nprint(1)\n```")),
    ("  \n", Parsed("  \n")),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_hermes_parser_finds_the_same_in_any_split(text: str, expected: Parsed) -> None:
    assert parse_all(HermesParser(), text) == expected
    for size in (1, 2, 3, 5, 11):
        parser, streamed = HermesParser(), Parsed()
        for i in range(0, len(text), size):
            streamed.add(parser.feed(text[i : i + size]))
        streamed.add(parser.finish())
        assert streamed == expected, size


def test_a_calls_name_comes_before_its_arguments_end() -> None:
    """Streaming: the name as soon as it is whole, the arguments piece by piece."""
    parser = HermesParser()
    head = '<tool_call>\n{"name": "get_weather", "arguments": {"ci'
    events = parser.feed(head)
    assert [type(e).__name__ for e in events] == ["CallStart", "Arguments"]
    assert parser.feed('ty": "Paris"}}') != []


def test_the_format_comes_from_the_template_or_the_config() -> None:
    qwen = ChatTemplateInfo("{% if tools %}...<tool_call>...{% endif %}")
    assert format_for(qwen, None) is FORMATS["hermes"]
    assert format_for(ChatTemplateInfo("{{ messages }}"), None) is None
    assert format_for(None, None) is None
    assert format_for(ChatTemplateInfo("{{ messages }}"), "hermes") is FORMATS["hermes"]


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer"}},
    "required": ["city"],
    "additionalProperties": False,
}


CALL2 = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>'


def matcher(lark: str) -> Any:
    tokenizer = llguidance.LLTokenizer("byte")  # one token per byte: the grammar judges text
    grammar_text = llguidance.LLMatcher.grammar_from_lark(lark)
    return llguidance.LLMatcher(tokenizer, grammar_text, log_level=0)


def accepts(lark: str, text: str) -> bool:
    m = matcher(lark)
    return all(m.consume_token(b) for b in text.encode()) and m.is_accepting()


@pytest.mark.parametrize(
    ("required", "parallel", "text", "ok"),
    [
        (True, False, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', True),
        (True, False, '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n</tool_call>', False),
        (True, False, '<tool_call>\n{"name": "other", "arguments": {"city": "Paris"}}\n</tool_call>', False),
        (True, False, "The weather is fine.", False),
        (False, False, "The weather is fine.", True),
        (False, False, '{"name": "get_weather", "arguments": {"city": "Rome"}}', True),
        (False, False, '{"name": "get_weather", "arguments": {"town": "Rome"}}', False),
        (False, False, '{"answer": 42}', False),
        (False, False, '```json\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n```', True),
        (False, False, '```json\n{"answer": 42}\n```', False),
        (False, False, "```python\nprint(1)\n```", True),
        (
            True,
            False,
            CALL2 + "\n" + CALL2,
            False,
        ),
        (True, True, CALL2 + "\n" + CALL2, True),
    ],
)
def test_the_grammar_holds_calls_to_the_tools_schemas(required: bool, parallel: bool, text: str, ok: bool) -> None:
    """On bytes, the markers are text, and `auto`'s free text could hold anything; with
    a model whose marker is a token of its own (Qwen), tests/integration/test_tools.py
    shows `auto` holding a call to its schema."""
    lark = grammar(AnswerShape([("get_weather", WEATHER)], required=required, parallel=parallel, literal=json.dumps))
    assert accepts(lark, text) is ok


def test_beside_calls_a_response_format_holds_the_answer() -> None:
    report = {"type": "object", "properties": {"celsius": {"type": "integer"}}, "required": ["celsius"]}
    lark = grammar(
        AnswerShape([("get_weather", WEATHER)], required=False, parallel=True, literal=json.dumps, response=report)
    )
    assert accepts(lark, '{"celsius": 21}')
    assert accepts(lark, '{"name": "get_weather", "arguments": {"city": "Rome"}}')
    assert accepts(lark, CALL2)
    assert not accepts(lark, "It is 21 degrees.")
    assert not accepts(lark, '{"celsius": "warm"}')
    assert parse_all(HermesParser(), '{"celsius": 21}') == Parsed('{"celsius": 21}')


def test_tool_fields_are_checked_and_named() -> None:
    base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert param_of(ChatCompletionRequest, {**base, "tool_choice": "required"}) == "tool_choice"
    named = {"type": "function", "function": {"name": "g"}}
    assert param_of(ChatCompletionRequest, {**base, "tools": [tool], "tool_choice": named}) == "tool_choice"
    assert param_of(ChatCompletionRequest, {**base, "tools": [tool, tool]}) == "tools"
    regex = {"regex": "[0-9]+"}
    assert param_of(ChatCompletionRequest, {**base, "tools": [tool], "structured_outputs": regex}) == (
        "structured_outputs"
    )
    ChatCompletionRequest.model_validate({**base, "tools": [tool], "tool_choice": "none", "structured_outputs": regex})
    ChatCompletionRequest.model_validate({**base, "tools": [tool], "response_format": {"type": "json_object"}})
    assert param_of(ChatCompletionRequest, {**base, "tools": [tool], "ignore_eos": True}) == "tool_choice"
    bad_name = {"type": "function", "function": {"name": "no spaces"}}
    assert str(param_of(ChatCompletionRequest, {**base, "tools": [bad_name]})).startswith("tools.0.function.name")
    orphan = {"role": "tool", "content": "21 C"}
    assert param_of(ChatCompletionRequest, {**base, "messages": [orphan]}) == "messages"
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    bad_call = {"role": "assistant", "tool_calls": [call]}
    assert param_of(ChatCompletionRequest, {**base, "messages": [bad_call]}) == "messages"
    r = ChatCompletionRequest.model_validate({**base, "tools": [tool]})
    assert r.calls_tools and r.tool_choice is None and r.parallel_tool_calls


LLAMA_CASES: list[tuple[str, Parsed]] = [
    (
        '{"name": "get_weather", "parameters": {"city": "Rome"}}',
        Parsed("", [ParsedCall("get_weather", '{"city": "Rome"}')]),
    ),
    ('<|python_tag|>{"name": "f", "parameters": {}}', Parsed("", [ParsedCall("f", "{}")])),
    ("The weather is fine.", Parsed("The weather is fine.")),
    # Hermes markers mean nothing in this format.
    (
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
        Parsed('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'),
    ),
    ('{"name": "f", "arguments": {}}', Parsed('{"name": "f", "arguments": {}}')),
]
MISTRAL_CASES: list[tuple[str, Parsed]] = [
    (
        '[TOOL_CALLS] [{"name": "a", "arguments": {"x": "]"}}, {"name": "b", "arguments": {}}]',
        Parsed("", [ParsedCall("a", '{"x": "]"}'), ParsedCall("b", "{}")]),
    ),
    ('Sure.[TOOL_CALLS][{"arguments": {"q": 1}, "name": "late"}]', Parsed("Sure.", [ParsedCall("late", '{"q": 1}')])),
    ("No tools needed [here].", Parsed("No tools needed [here].")),
    ("[TOOL_CALLS] not a list", Parsed("[TOOL_CALLS] not a list")),
    ('[TOOL_CALLS] [{"name": "cut", "arguments": {"city": "Par', Parsed("", [ParsedCall("cut", '{"city": "Par')])),
]


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [("llama3_json", t, e) for t, e in LLAMA_CASES] + [("mistral", t, e) for t, e in MISTRAL_CASES],
)
def test_llama3_and_mistral_parsers_find_the_same_in_any_split(fmt: str, text: str, expected: Parsed) -> None:
    make = FORMATS[fmt].parser
    assert parse_all(make(), text) == expected
    for size in (1, 2, 3, 7):
        parser, streamed = make(), Parsed()
        for i in range(0, len(text), size):
            streamed.add(parser.feed(text[i : i + size]))
        streamed.add(parser.finish())
        assert streamed == expected, size


@pytest.mark.parametrize(
    ("fmt", "required", "parallel", "text", "ok"),
    [
        ("llama3_json", True, True, '{"name": "get_weather", "parameters": {"city": "Rome"}}', True),
        ("llama3_json", True, True, '{"name": "get_weather", "parameters": {"town": "Rome"}}', False),
        ("llama3_json", True, True, '{"name": "get_weather", "arguments": {"city": "Rome"}}', False),
        ("llama3_json", False, True, "Sunny, they say.", True),
        ("mistral", True, True, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "A"}}]', True),
        (
            "mistral",
            True,
            True,
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "A"}}, ' * 1
            + '{"name": "get_weather", "arguments": {"city": "B"}}]',
            True,
        ),
        (
            "mistral",
            True,
            False,
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "A"}}, '
            + '{"name": "get_weather", "arguments": {"city": "B"}}]',
            False,
        ),
        ("mistral", True, True, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"days": 1}}]', False),
        ("mistral", True, True, "[TOOL_CALLS] []", False),
        ("mistral", False, True, "No call.", True),
    ],
)
def test_llama3_and_mistral_grammars_hold_calls_to_the_schemas(
    fmt: str, required: bool, parallel: bool, text: str, ok: bool
) -> None:
    lark = FORMATS[fmt].grammar(
        AnswerShape([("get_weather", WEATHER)], required=required, parallel=parallel, literal=json.dumps)
    )
    assert accepts(lark, text) is ok


def test_templates_show_their_format() -> None:
    llama = ChatTemplateInfo(
        '{% if tools %}{"name": function name, "parameters": dictionary of argument name}{% endif %}'
    )
    mistral = ChatTemplateInfo("{% if tools %}[AVAILABLE_TOOLS]...{% endif %}{{ '[TOOL_CALLS]' }}")
    assert format_for(llama, None) is FORMATS["llama3_json"]
    assert format_for(mistral, None) is FORMATS["mistral"]
