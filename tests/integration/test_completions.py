"""/v1/completions on the real SmolLM2 model, driven by the official openai client."""

from __future__ import annotations

import math

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


def test_greedy_is_deterministic(client: openai.OpenAI) -> None:
    assert greedy(client, "Once upon a time") == greedy(client, "Once upon a time")


def test_same_seed_same_output_and_seeds_differ(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.completions.create(model=SMOL, prompt="My favourite food is", max_tokens=16, seed=seed)
        return r.choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1


def test_n_choices_are_indexed_and_counted(client: openai.OpenAI) -> None:
    r = client.completions.create(model=SMOL, prompt="A list of fruits:", max_tokens=6, n=3, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1  # seeds seed, seed+1, seed+2
    assert r.usage is not None
    assert r.usage.completion_tokens == 18
    assert r.usage.prompt_tokens == 5


def test_list_of_prompts_gives_choices_in_prompt_order(client: openai.OpenAI) -> None:
    prompts = [PROMPT, "Two plus two equals"]
    r = client.completions.create(model=SMOL, prompt=prompts, max_tokens=5, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text == greedy(client, prompts[0], 5)
    assert r.choices[2].text == r.choices[3].text == greedy(client, prompts[1], 5)


def test_token_id_prompts(gateway: RunningServer, client: openai.OpenAI) -> None:
    ids = gateway.router.get(SMOL).backend.tokenize(PROMPT)
    assert greedy(client, ids, 6) == greedy(client, PROMPT, 6)
    r = client.completions.create(model=SMOL, prompt=[ids, ids[:3]], max_tokens=4, temperature=0)
    assert r.choices[0].text == greedy(client, PROMPT, 4)
    assert r.usage is not None and r.usage.prompt_tokens == len(ids) + 3


def test_logprobs_of_generated_tokens(client: openai.OpenAI) -> None:
    r = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob is not None and logprob <= 0
        assert 3 <= len(top) <= 4  # the 3 most likely plus the chosen token
        assert math.isclose(max(top.values()), logprob)  # greedy picks the most likely
        assert top[token] == logprob
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]


def test_echo_returns_the_prompt_with_null_first_logprob(client: openai.OpenAI) -> None:
    r = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1)
    choice = r.choices[0]
    assert choice.text.startswith(PROMPT)
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert len(lp.tokens) == 5 + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v is not None for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text


def test_echo_with_zero_max_tokens_scores_the_prompt_only(client: openai.OpenAI) -> None:
    r = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    assert r.choices[0].text == PROMPT
    assert r.usage is not None and r.usage.completion_tokens == 0


def test_stop_string_cuts_the_text(client: openai.OpenAI) -> None:
    full = greedy(client, PROMPT, 16)
    word = full.split()[2]
    r = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=16, temperature=0, stop=[word, "zzzz"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[: full.index(word)]


def test_logit_bias_forces_a_token(gateway: RunningServer, client: openai.OpenAI) -> None:
    [paris] = gateway.router.get(SMOL).backend.tokenize(" Paris")
    r = client.completions.create(model=SMOL, prompt="Hello", max_tokens=4, logit_bias={str(paris): 100}, seed=3)
    assert r.choices[0].text == " Paris" * 4


def test_ignore_eos_and_min_tokens(gateway: RunningServer, client: openai.OpenAI) -> None:
    eos_bias = {"0": 100.0, "2": 100.0}  # <|endoftext|> and <|im_end|> made certain
    base = {"model": SMOL, "prompt": "Hi", "max_tokens": 8, "temperature": 0, "logit_bias": eos_bias}
    stopped = client.completions.create(**base)  # type: ignore[call-overload]
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1
    forced = client.completions.create(**base, extra_body={"ignore_eos": True})  # type: ignore[call-overload]
    assert forced.choices[0].finish_reason == "length" and forced.usage.completion_tokens == 8
    at_least = client.completions.create(**base, extra_body={"min_tokens": 5})  # type: ignore[call-overload]
    assert at_least.choices[0].finish_reason == "stop" and at_least.usage.completion_tokens == 6


def test_penalties_and_extensions_change_sampling(client: openai.OpenAI) -> None:
    prompt = "one one one one one one one one"
    plain = greedy(client, prompt, 10)
    penalised = client.completions.create(
        model=SMOL, prompt=prompt, max_tokens=10, temperature=0, frequency_penalty=2.0, presence_penalty=2.0
    ).choices[0]
    assert penalised.text != plain
    top1 = client.completions.create(
        model=SMOL, prompt=prompt, max_tokens=10, temperature=1.5, seed=5, extra_body={"top_k": 1}
    ).choices[0]
    assert top1.text == plain  # top_k=1 is greedy whatever the temperature


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


def test_streaming_matches_the_single_body(client: openai.OpenAI) -> None:
    expected = greedy(client, PROMPT, 10)
    stream = client.completions.create(
        model=SMOL,
        prompt=PROMPT,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10


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
