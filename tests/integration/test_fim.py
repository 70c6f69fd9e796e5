"""Fill-in-the-middle: `suffix` on /v1/completions for a model trained on it
(Qwen2.5-Coder, whose catalog entry names its FIM tokens), and a 400 naming `suffix`
for a model that was not (SmolLM2). Greedy decoding."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import QWEN, SMOL
from tests.server import RunningServer


@pytest.fixture(scope="module")
def qwen(qwen_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=qwen_server.v1, api_key="unused", max_retries=0)


def test_the_middle_of_a_function_fits_its_suffix(qwen: openai.OpenAI) -> None:
    """The suffix returns a variable the prefix never names: only a model that read
    the suffix defines it in the middle."""
    prefix = "def rectangle_area(width: float, height: float) -> float:\n    "
    suffix = "\n    return area\n"
    r = qwen.completions.create(model=QWEN, prompt=prefix, suffix=suffix, max_tokens=24, temperature=0)
    middle = r.choices[0].text.split("\n")[0]  # the hole is one line; the model may go on past it
    namespace: dict[str, object] = {}
    exec(prefix + middle + suffix, namespace)
    assert namespace["rectangle_area"](3.0, 4.0) == 12.0  # type: ignore[operator]
    # Without the suffix the same prefix continues differently: the suffix is what steered it.
    plain = qwen.completions.create(model=QWEN, prompt=prefix, max_tokens=24, temperature=0)
    assert plain.choices[0].text.split("\n")[0] != middle


def test_a_hole_that_ends_where_the_suffix_begins(qwen: openai.OpenAI) -> None:
    prefix = "def mean(values: list[float]) -> float:\n    total = "
    suffix = "\n    return total / len(values)\n"
    r = qwen.completions.create(model=QWEN, prompt=prefix, suffix=suffix, max_tokens=40, temperature=0)
    namespace: dict[str, object] = {}
    exec(prefix + r.choices[0].text.rstrip() + suffix, namespace)
    assert namespace["mean"]([1.0, 2.0, 6.0]) == 3.0  # type: ignore[operator]
    assert r.usage is not None and r.usage.prompt_tokens > len(prefix.split())


def test_suffix_is_refused_where_it_cannot_be_honoured(gateway: RunningServer, qwen_server: RunningServer) -> None:
    cases = [
        (gateway.v1, {"model": SMOL, "prompt": "def f():", "suffix": "    return 1"}, "suffix", "not trained"),
        (qwen_server.v1, {"model": QWEN, "prompt": [1, 2, 3], "suffix": "x"}, "suffix", "as text"),
        (qwen_server.v1, {"model": QWEN, "prompt": "a", "suffix": "b", "echo": True}, "echo", "echo"),
    ]
    for base, body, param, words in cases:
        r = httpx.post(base + "/completions", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and words in error["message"], error
