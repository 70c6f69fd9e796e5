"""POST /tokenize and /detokenize, in vLLM's shape: a client (the load tester among
them) can build prompts of an exact length in the served model's own tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.api.checks import check_token_ids
from gateway.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from gateway.router import Deployment

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    deployment: Deployment = request.app.state.router.get(body.model)
    backend = deployment.backend
    tokens = backend.tokenize(body.prompt)
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=backend.max_model_len)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    deployment: Deployment = request.app.state.router.get(body.model)
    check_token_ids(deployment.backend, body.tokens, "tokens")
    return DetokenizeResponse(prompt=deployment.backend.detokenize(body.tokens))
