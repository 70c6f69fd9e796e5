"""Request checks that need the model: its context length and its vocabulary."""

from __future__ import annotations

from typing import Protocol

from gateway.errors import invalid


class _Model(Protocol):
    """What the checks read of an engine (generating or embedding)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_model_len(self) -> int: ...


def check_context(backend: _Model, prompts: list[list[int]], max_tokens: int, param: str) -> None:
    limit = backend.max_model_len
    for tokens in prompts:
        if len(tokens) + max_tokens > limit:
            raise invalid(
                f"this model's maximum context length is {limit} tokens; the prompt has {len(tokens)} "
                f"and max_tokens asks for {max_tokens} more",
                param,
                code="context_length_exceeded",
            )


def check_token_ids(backend: _Model, token_ids: list[int], param: str) -> None:
    vocab = backend.vocab_size
    bad = next((t for t in token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise invalid(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param)
