"""Request models: defaults, nulls, shapes, cross-field checks and the errors they name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.protocol import ChatCompletionRequest, CompletionRequest, ParamError


def param_of(model: type[CompletionRequest] | type[ChatCompletionRequest], data: dict[str, Any]) -> str | None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(data)
    original = (raised.value.errors()[0].get("ctx") or {}).get("error")
    if isinstance(original, ParamError):
        return original.param
    return ".".join(str(p) for p in raised.value.errors()[0]["loc"])


def test_defaults_follow_openai() -> None:
    r = CompletionRequest.model_validate({"model": "m", "prompt": "hi"})
    assert (r.max_tokens, r.temperature, r.top_p, r.n, r.stream, r.echo, r.logprobs) == (
        16,
        1.0,
        1.0,
        1,
        False,
        False,
        None,
    )
    p = r.sampling_params(max_tokens=r.max_tokens, seed=None, logprobs=None, prompt_logprobs=None)
    assert p.max_tokens == 16 and p.top_k == 0 and p.stop == []


def test_nulls_mean_defaults() -> None:
    r = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "max_tokens": None, "stop": None, "n": None})
    assert r.max_tokens == 16 and r.stop == [] and r.n == 1


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_the_four_prompt_shapes(prompt: Any) -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompt == prompt


def test_a_single_stop_string_becomes_a_list() -> None:
    r = CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": "\n"})
    assert r.stop == ["\n"]


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"stop": ["a"] * 5}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"prompt": []}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_cross_field_checks_name_their_param(data: dict[str, Any], param: str) -> None:
    assert param_of(CompletionRequest, {"model": "m", "prompt": "x", **data}) == param


def test_max_tokens_zero_is_allowed_with_echo() -> None:
    assert (
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "max_tokens": 0, "echo": True}).max_tokens == 0
    )


def test_min_tokens_beyond_max_tokens_is_a_param_error() -> None:
    r = CompletionRequest.model_validate({"model": "m", "prompt": "x", "min_tokens": 9, "max_tokens": 3})
    with pytest.raises(ParamError) as raised:
        r.sampling_params(max_tokens=3, seed=None, logprobs=None, prompt_logprobs=None)
    assert raised.value.param == "min_tokens"


def test_chat_content_parts_join_and_limits_prefer_max_completion_tokens() -> None:
    r = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "max_tokens": 5,
            "max_completion_tokens": 7,
        }
    )
    assert r.messages[0].text() == "ab"
    assert r.output_limit == 7


def test_chat_rejects_malformed_tools_and_orphan_top_logprobs() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert param_of(ChatCompletionRequest, {**base, "tools": [{"type": "function"}]}) == "tools.0.function"
    assert param_of(ChatCompletionRequest, {**base, "top_logprobs": 1}) == "top_logprobs"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"verbosity": "low"}, "verbosity"),
        ({"store": True}, "store"),
        ({"modalities": ["text", "audio"]}, "modalities.1"),
        ({"service_tier": "priority"}, "service_tier"),
    ],
)
def test_openai_fields_that_cannot_be_honoured_are_refused_by_name(extra: dict[str, Any], param: str) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert param_of(ChatCompletionRequest, {**base, **extra}) == param


def test_fields_that_ask_nothing_are_accepted_and_unknown_ones_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    harmless = {"store": False, "metadata": {"k": "v"}, "modalities": ["text"], "service_tier": "auto"}
    ChatCompletionRequest.model_validate({**base, **harmless, "prompt_cache_key": "a", "safety_identifier": "b"})
    with caplog.at_level("WARNING", logger="lightgate"):
        for _ in range(3):
            ChatCompletionRequest.model_validate({**base, "x_unheard_of": 1})
            CompletionRequest.model_validate({"model": "m", "prompt": "hi", "x_unheard_of": 1})
    logged = [r.getMessage() for r in caplog.records if "'x_unheard_of'" in r.getMessage()]
    assert logged == ["ignoring the request field 'x_unheard_of' (in ChatCompletionRequest): Lightgate does not use it"]
