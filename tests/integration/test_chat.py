"""/v1/chat/completions on the real SmolLM2 model, with the model's own chat template."""

from __future__ import annotations

import openai
from openai.types.chat import ChatCompletionMessageParam

from gateway.chat_template import render
from tests.conftest import SMOL
from tests.server import RunningServer

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_chat_answers_and_counts_the_templated_prompt(gateway: RunningServer, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=SMOL, messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    [choice] = r.choices
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    backend = gateway.router.get(SMOL).engine
    template = backend.chat_template
    assert template is not None
    rendered = render(template, [dict(m) for m in MESSAGES], add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(backend.tokenize(rendered, special=True))


def test_chat_ends_at_end_of_turn_without_a_limit(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=SMOL, messages=MESSAGES, temperature=0)
    assert r.choices[0].finish_reason == "stop"
    assert "<|im_end|>" not in (r.choices[0].message.content or "")


def test_max_completion_tokens_and_stop(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=SMOL, messages=MESSAGES, max_completion_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3
    full = client.chat.completions.create(model=SMOL, messages=MESSAGES, max_tokens=12, temperature=0)
    text = full.choices[0].message.content or ""
    word = text.split()[1]
    cut = client.chat.completions.create(model=SMOL, messages=MESSAGES, max_tokens=12, temperature=0, stop=word)
    assert cut.choices[0].message.content == text[: text.index(word)]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=SMOL, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 4
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    for t in lp.content:
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob == t.logprob  # greedy takes the most likely
        assert bytes(t.bytes or []) == t.token.encode()


def test_chat_n_and_seed(client: openai.OpenAI) -> None:
    def run() -> list[str]:
        r = client.chat.completions.create(model=SMOL, messages=MESSAGES, max_tokens=8, n=2, seed=42)
        assert [c.index for c in r.choices] == [0, 1]
        return [c.message.content or "" for c in r.choices]

    first = run()
    assert first == run()


def test_chat_streaming_role_first_then_deltas_then_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=SMOL, messages=MESSAGES, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model=SMOL,
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert full.usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
