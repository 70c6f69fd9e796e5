"""The OpenAI wire protocol of /v1/embeddings: the request (input in its four shapes,
encoding_format, dimensions, vLLM's truncate_prompt_tokens) and the response."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from gateway.protocol import ParamError, _Body


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    # vLLM's extension: keep only the last k tokens of an input longer than that (-1:
    # the model's context), instead of the 400 an input over the context gets.
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str] | list[int] | list[list[int]]) -> object:
        if isinstance(value, list) and not value:
            raise ParamError("input must not be an empty list", "input")
        if isinstance(value, list) and len(value) > 2048:
            raise ParamError("input may hold at most 2048 items", "input")
        return value

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _truncate(cls, value: int | None) -> int | None:
        if value == 0:
            raise ParamError(
                "truncate_prompt_tokens must be positive, or -1 for the model's context", "truncate_prompt_tokens"
            )
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
