"""The synthetic backend: its stream obeys max_tokens, stop, EOS and min_tokens."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import GenerationRequest, SamplingParams, UnsupportedFeature
from backends.synthetic import EOS, SyntheticBackend


def run(backend: SyntheticBackend, params: SamplingParams) -> tuple[str, list[int], str | None]:
    async def go() -> tuple[str, list[int], str | None]:
        chunks = [c async for c in backend.generate(GenerationRequest("r", [1], params))]
        return "".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids], chunks[-1].finish_reason

    return asyncio.run(go())


def test_length_and_text() -> None:
    assert run(SyntheticBackend(), SamplingParams(max_tokens=9)) == ("The quick", list(b"The quick"), "length")


def test_stop_string() -> None:
    text, _, finish = run(SyntheticBackend(), SamplingParams(max_tokens=30, stop=["brown"]))
    assert (text, finish) == ("The quick ", "stop")


def test_eos_after_output_tokens_unless_ignored_or_too_early() -> None:
    b = SyntheticBackend(output_tokens=3)
    assert run(b, SamplingParams(max_tokens=10)) == ("The", [*list(b"The"), EOS], "stop")
    assert run(b, SamplingParams(max_tokens=5, ignore_eos=True))[2] == "length"
    assert run(b, SamplingParams(max_tokens=10, min_tokens=5))[1] == [*list(b"The q"), EOS]


def test_logprobs_are_unsupported_and_options_checked() -> None:
    with pytest.raises(UnsupportedFeature):
        run(SyntheticBackend(), SamplingParams(logprobs=1))
    with pytest.raises(ValueError, match="unknown synthetic options"):
        SyntheticBackend(nope=1)
