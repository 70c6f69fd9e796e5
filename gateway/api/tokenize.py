"""POST /tokenize and /detokenize, in vLLM's shape: a client (the load tester among
them) can build prompts of an exact length in the served model's own tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backends.base import Kind
from gateway.api.checks import check_token_ids
from gateway.forwarding import relay_json
from gateway.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from gateway.router import Deployment

router = APIRouter()


@router.post("/tokenize", response_model=None)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse | JSONResponse:
    deployment: Deployment = request.app.state.router.get(body.model)
    if deployment.kind is Kind.RELAY:  # the upstream's tokenizer is the one that counts
        return await relay_json(deployment, "/tokenize", await request.json(), request.state.record.request_id)
    backend = deployment.tokenizer
    tokens = backend.tokenize(body.prompt, special=True)  # as /v1/completions counts a prompt
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=backend.max_model_len)


@router.post("/detokenize", response_model=None)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse | JSONResponse:
    deployment: Deployment = request.app.state.router.get(body.model)
    if deployment.kind is Kind.RELAY:
        return await relay_json(deployment, "/detokenize", await request.json(), request.state.record.request_id)
    backend = deployment.tokenizer
    check_token_ids(backend, body.tokens, "tokens")
    return DetokenizeResponse(prompt=backend.detokenize(body.tokens))
