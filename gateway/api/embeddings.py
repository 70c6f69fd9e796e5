"""POST /v1/embeddings: texts or token ids in, one vector per input out (floats, or
base64 of little-endian float32 as the official SDK asks for by default)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from backends.base import Kind
from backends.embedding import Embedder, Vectors, normalized
from gateway.api.checks import check_token_ids
from gateway.errors import invalid
from gateway.forwarding import relay_json
from gateway.generation import admission_slot, engine_errors
from gateway.protocol_embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from gateway.request_log import RequestRecord, bind_request
from gateway.router import Deployment
from gateway.streaming import until_disconnect

router = APIRouter()


def input_token_lists(body: EmbeddingRequest, model: Embedder) -> list[list[int]]:
    """The four input shapes as token ids (texts with the model's special tokens, as
    sentence-transformers tokenizes them), each within the model's context or cut
    to `truncate_prompt_tokens`."""
    value = body.input
    if isinstance(value, str):
        lists = [model.tokenize(value)]
    elif all(isinstance(v, str) for v in value):
        lists = [model.tokenize(str(v)) for v in value]
    elif all(isinstance(v, int) for v in value):
        lists = [list(value)]  # type: ignore[arg-type]
    else:
        lists = [list(v) for v in value]  # type: ignore[arg-type]
    limit = model.max_model_len
    keep = body.truncate_prompt_tokens
    if keep is not None:
        if keep > limit:
            raise invalid(
                f"truncate_prompt_tokens ({keep}) is over the model's context of {limit}", "truncate_prompt_tokens"
            )
        keep = limit if keep == -1 else keep
        lists = [tokens[-keep:] for tokens in lists]
    for i, tokens in enumerate(lists):
        if not tokens:
            raise invalid(f"input {i} is empty", "input")
        if len(tokens) > limit:
            raise invalid(
                f"this model's maximum context length is {limit} tokens; input {i} has {len(tokens)} "
                "(truncate_prompt_tokens cuts inputs to fit)",
                "input",
                code="context_length_exceeded",
            )
        check_token_ids(model, tokens, "input")
    return lists


def check_dimensions(deployment: Deployment, width: int, dimensions: int | None) -> None:
    """`dimensions` may only cut a model's vectors to a width it was trained for (Matryoshka)."""
    if dimensions is None or dimensions == width or dimensions in deployment.traits.matryoshka_dimensions:
        return
    allowed = deployment.traits.matryoshka_dimensions
    why = f"it may be cut to {list(allowed)}" if allowed else "it was not trained for truncation (Matryoshka)"
    raise invalid(f"the model {deployment.name!r} gives {width} dimensions and {why}", "dimensions")


def encode(vector: Vectors, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector.tolist()]


@router.post("/v1/embeddings", response_model=None)
async def create_embedding(body: EmbeddingRequest, request: Request) -> Response:
    deployment: Deployment = request.app.state.router.get(body.model)
    record = bind_request(request, deployment)
    if deployment.kind is Kind.RELAY:
        return await relay_json(deployment, "/v1/embeddings", await request.json(), record.request_id)
    deployment.require_task("embed", "/v1/embeddings")
    model = deployment.embedder
    inputs = input_token_lists(body, model)
    check_dimensions(deployment, model.embedding_dim, body.dimensions)
    tokens = sum(len(t) for t in inputs)
    record.expect(tokens, 0, body.input)
    vectors = await until_disconnect(request, _embed(deployment, model, inputs, record))
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        vectors = normalized(vectors[:, : body.dimensions])
    record.embedded()
    data = [Embedding(index=i, embedding=encode(v, body.encoding_format)) for i, v in enumerate(vectors)]
    response = EmbeddingResponse(
        data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )
    return Response(response.model_dump_json(), media_type="application/json")


async def _embed(deployment: Deployment, model: Embedder, inputs: list[list[int]], record: RequestRecord) -> Vectors:
    with engine_errors(deployment):
        async with admission_slot(deployment, record, record.prompt_tokens):
            return await model.embed(inputs)
