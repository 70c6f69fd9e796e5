"""/v1/completions on the real SmolLM2 model, driven by the official openai client: what
is particular to llama.cpp's backend and to the completions route. The contract every
backend keeps (sampling, stop, logprobs, echo, streaming...) is tests/conformance/."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import SMOL
from tests.server import RunningServer

PROMPT = "The capital of France is"


def greedy(client: openai.OpenAI, prompt: str | list[int], max_tokens: int = 12) -> str:
    r = client.completions.create(model=SMOL, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return r.choices[0].text


def test_completion_answers_with_the_models_text(client: openai.OpenAI) -> None:
    r = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.id.startswith("cmpl-")
    assert r.object == "text_completion"
    assert r.model == SMOL
    [choice] = r.choices
    assert "Paris" in choice.text
    assert choice.finish_reason == "length"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 8, 13)


def test_alias_serves_the_same_model(client: openai.OpenAI) -> None:
    r = client.completions.create(model="smol", prompt=PROMPT, max_tokens=6, temperature=0)
    assert r.choices[0].text == greedy(client, PROMPT, 6)


def test_list_of_prompts_gives_choices_in_prompt_order(client: openai.OpenAI) -> None:
    prompts = [PROMPT, "Two plus two equals"]
    r = client.completions.create(model=SMOL, prompt=prompts, max_tokens=5, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text == greedy(client, prompts[0], 5)
    assert r.choices[2].text == r.choices[3].text == greedy(client, prompts[1], 5)


def test_token_id_prompts(gateway: RunningServer, client: openai.OpenAI) -> None:
    ids = gateway.router.get(SMOL).engine.tokenize(PROMPT)
    assert greedy(client, ids, 6) == greedy(client, PROMPT, 6)
    r = client.completions.create(model=SMOL, prompt=[ids, ids[:3]], max_tokens=4, temperature=0)
    assert r.choices[0].text == greedy(client, PROMPT, 4)
    assert r.usage is not None and r.usage.prompt_tokens == len(ids) + 3


def test_best_of_returns_the_most_likely_candidate(client: openai.OpenAI) -> None:
    r = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=6, best_of=3, n=1, seed=11, logprobs=0)
    [choice] = r.choices
    assert choice.logprobs is not None and choice.logprobs.token_logprobs
    best = sum(v for v in choice.logprobs.token_logprobs if v is not None)
    for j in range(3):  # each candidate alone, by its seed
        alone = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=6, seed=11 + j, logprobs=0)
        lp = alone.choices[0].logprobs
        assert lp is not None and lp.token_logprobs
        assert best >= sum(v for v in lp.token_logprobs if v is not None) - 1e-6
    assert r.usage is not None and r.usage.completion_tokens == 18


def test_streaming_echo_with_logprobs(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=SMOL, prompt=PROMPT, max_tokens=3, temperature=0, stream=True, echo=True, logprobs=1
    )
    chunks = list(stream)
    assert chunks[0].choices[0].text.startswith(PROMPT)
    tokens = [t for c in chunks for t in (c.choices[0].logprobs.tokens or [])]  # type: ignore[union-attr]
    assert len(tokens) == 8
    offsets = [o for c in chunks for o in (c.choices[0].logprobs.text_offset or [])]  # type: ignore[union-attr]
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(8)]


@pytest.mark.parametrize("n", [2])
def test_streaming_n_choices(client: openai.OpenAI, n: int) -> None:
    stream = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=4, n=n, seed=2, stream=True)
    finished = [c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == list(range(n))
