"""POST /v1/completions: prompts in, text completions out (one JSON body or SSE)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from backends.base import Backend, GenerationRequest, Kind
from gateway.api.checks import check_context, check_token_ids
from gateway.errors import invalid
from gateway.forwarding import forward
from gateway.generation import generate
from gateway.outputs import SequenceOutput, completion_logprobs, usage
from gateway.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    new_id,
    now,
)
from gateway.request_log import RequestRecord, bind_request
from gateway.router import Deployment
from gateway.streaming import event_stream, until_disconnect

router = APIRouter()


def prompt_token_lists(body: CompletionRequest, backend: Backend) -> list[list[int]]:
    """The four prompt shapes OpenAI accepts, as token ids, checked against the model."""
    prompt = body.prompt
    # A client that formats its own prompt writes the model's control tokens in it
    # (`<|endoftext|>`, `<|im_start|>`): they are parsed as such, as the peers do.
    if isinstance(prompt, str):
        lists = [backend.tokenize(prompt, special=True)]
    elif all(isinstance(p, str) for p in prompt):
        lists = [backend.tokenize(p, special=True) for p in prompt]  # type: ignore[arg-type]
    elif all(isinstance(p, int) for p in prompt):
        lists = [list(prompt)]  # type: ignore[arg-type]
    else:
        lists = [list(p) for p in prompt]  # type: ignore[arg-type]
    for tokens in lists:
        if not tokens:
            raise invalid("prompt must not be empty", "prompt")
        check_token_ids(backend, tokens, "prompt")
    return lists


def fill_in_the_middle(body: CompletionRequest, deployment: Deployment) -> list[list[int]]:
    """Each text prompt as the code before a hole and `suffix` as the code after it, in
    the model's own FIM layout (prefix token, prefix, suffix token, suffix, middle
    token): the model then writes the middle."""
    fim = deployment.traits.fim
    if fim is None:
        raise invalid(
            f"the model {body.model!r} was not trained for fill-in-the-middle: suffix cannot be honoured", "suffix"
        )
    prompt = body.prompt
    texts = [prompt] if isinstance(prompt, str) else prompt
    if not all(isinstance(t, str) for t in texts):
        raise invalid("suffix needs the prompt as text, not token ids", "suffix")
    if body.echo:
        raise invalid("echo cannot be combined with suffix", "echo")
    backend = deployment.engine
    markers = [backend.tokenize(m, special=True, bos=False) for m in fim]
    if any(len(m) != 1 for m in markers):
        raise invalid(f"the model's vocabulary lacks its fill-in-the-middle tokens {list(fim)}", "suffix")
    pre, suf, mid = (m[0] for m in markers)
    suffix = backend.tokenize(body.suffix or "", special=True, bos=False)
    start = backend.tokenize("", bos=True)  # the model's BOS, if it wants one
    return [[*start, pre, *backend.tokenize(str(t), special=True, bos=False), suf, *suffix, mid] for t in texts]


def echo_prefix(body: CompletionRequest, deployment: Deployment, index: int, tokens: list[int]) -> str:
    """What echo puts before prompt `index`'s completion: the prompt as the client wrote
    it (its control tokens included), or the token ids' text."""
    if not body.echo:
        return ""
    prompt = body.prompt
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt[index], str):
        return str(prompt[index])
    return deployment.engine.detokenize(tokens)


def sequences(body: CompletionRequest, request_id: str, prompts: list[list[int]]) -> list[GenerationRequest]:
    """best_of sequences per prompt. Choice j is seeded seed+j so choices differ yet
    repeat exactly. Under echo the prompt is scored once per prompt, or by every
    sequence when streaming, where each choice's first chunk carries its prompt."""
    best_of = body.best_of or body.n
    logprobs = body.logprobs if body.logprobs is not None else (0 if best_of > body.n else None)
    out = []
    for p, tokens in enumerate(prompts):
        for j in range(best_of):
            params = body.sampling_params(
                max_tokens=body.max_tokens,
                seed=None if body.seed is None else body.seed + j,
                logprobs=logprobs,
                prompt_logprobs=body.logprobs if body.echo and (j == 0 or body.stream) else None,
            )
            out.append(GenerationRequest(f"{request_id}-{p}-{j}", tokens, params))
    return out


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    deployment: Deployment = request.app.state.router.get(body.model)
    record = bind_request(request, deployment)
    if deployment.kind is Kind.RELAY:  # the upstream tokenizes, templates and samples
        prompt = body.prompt
        count = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
        return await forward(request, deployment, record, "/v1/completions", stream=body.stream, choices=count * body.n)
    deployment.require_task("generate", "/v1/completions")
    backend = deployment.engine
    prompts = fill_in_the_middle(body, deployment) if body.suffix is not None else prompt_token_lists(body, backend)
    check_context(backend, prompts, body.max_tokens, "prompt")
    check_token_ids(backend, [int(k) for k in body.logit_bias], "logit_bias")
    request_id = new_id("cmpl")
    reqs = sequences(body, request_id, prompts)
    record.expect(sum(len(p) for p in prompts), len(reqs), body.prompt)
    if body.stream:
        return await event_stream(request, record, _stream(body, deployment, request_id, prompts, reqs, record))
    response = await until_disconnect(request, _complete(body, deployment, request_id, prompts, reqs, record))
    return JSONResponse(response.model_dump())


async def _complete(
    body: CompletionRequest,
    deployment: Deployment,
    request_id: str,
    prompts: list[list[int]],
    reqs: list[GenerationRequest],
    record: RequestRecord,
) -> CompletionResponse:
    outputs = [SequenceOutput() for _ in reqs]
    async for index, chunk in generate(deployment, reqs, record):
        outputs[index].add(chunk)
    best_of = body.best_of or body.n
    choices: list[CompletionChoice] = []
    for p, tokens in enumerate(prompts):
        group = outputs[p * best_of : (p + 1) * best_of]
        echo_source = group[0]
        if best_of > body.n:  # keep the n most likely candidates
            group = sorted(group, key=lambda o: o.cumulative_logprob, reverse=True)[: body.n]
        prefix = echo_prefix(body, deployment, p, tokens)
        for out in group:
            choices.append(_choice(body, len(choices), prefix, echo_source, out))
    counts = usage(sum(len(p) for p in prompts), outputs)
    return CompletionResponse(id=request_id, created=now(), model=body.model, choices=choices, usage=counts)


def _choice(
    body: CompletionRequest, index: int, prefix: str, echo_source: SequenceOutput, out: SequenceOutput
) -> CompletionChoice:
    logprobs = None
    if body.logprobs is not None:
        entries = (echo_source.prompt_logprobs or []) if body.echo else []
        logprobs = completion_logprobs(entries + out.logprobs)
    return CompletionChoice(index=index, text=prefix + out.text, logprobs=logprobs, finish_reason=out.finish_reason)


async def _stream(
    body: CompletionRequest,
    deployment: Deployment,
    request_id: str,
    prompts: list[list[int]],
    reqs: list[GenerationRequest],
    record: RequestRecord,
) -> AsyncGenerator[BaseModel, None]:
    created = now()
    outputs = [SequenceOutput() for _ in reqs]
    offsets = [0] * len(reqs)
    n = body.n  # best_of == n when streaming, so sequence i is choice i
    started: set[int] = set()
    async for index, chunk in generate(deployment, reqs, record):
        outputs[index].add(chunk)
        text = chunk.text
        entries = list(chunk.logprobs or [])
        if index not in started:
            started.add(index)
            if body.echo:
                text = echo_prefix(body, deployment, index // n, prompts[index // n]) + text
                entries = list(chunk.prompt_logprobs or []) + entries
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(entries, offsets[index])
            offsets[index] += sum(len(t) for t in logprobs.tokens)
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=chunk.finish_reason)
        yield CompletionResponse(id=request_id, created=created, model=body.model, choices=[choice])
    if body.include_usage:
        yield CompletionResponse(
            id=request_id,
            created=created,
            model=body.model,
            choices=[],
            usage=usage(sum(len(p) for p in prompts), outputs),
        )
