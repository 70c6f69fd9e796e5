"""POST /tokenize and /detokenize, in vLLM's shape: a client (the load tester among
them) can build prompts of an exact length in the served model's own tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.api.checks import check_token_ids
from gateway.forwarding import is_forwarding, relay_json
from gateway.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from gateway.router import Deployment

router = APIRouter()


@router.post("/tokenize", response_model=None)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse | JSONResponse:
    deployment: Deployment = request.app.state.router.get(body.model)
    if is_forwarding(deployment):  # the upstream's tokenizer is the one that counts
        return await relay_json(deployment, "/tokenize", await request.json(), request.state.record.request_id)
    backend = deployment.backend
    tokens = backend.tokenize(body.prompt)
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=backend.max_model_len)


@router.post("/detokenize", response_model=None)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse | JSONResponse:
    deployment: Deployment = request.app.state.router.get(body.model)
    if is_forwarding(deployment):
        return await relay_json(deployment, "/detokenize", await request.json(), request.state.record.request_id)
    check_token_ids(deployment.backend, body.tokens, "tokens")
    return DetokenizeResponse(prompt=deployment.backend.detokenize(body.tokens))
