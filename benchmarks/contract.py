"""Probes an OpenAI-compatible server the way a new user would and reports, check by
check, whether it keeps the contract ("ok") or what it did instead."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from backends.logprobs import log_softmax
from compressed_models.catalog import resolve

SENTENCE = "The quick brown fox jumps over the lazy dog because it wanted to see the river."


def _status(r: httpx.Response, want: int) -> str:
    return "ok" if r.status_code == want else f"no ({r.status_code})"


def _reference_logprobs(tokens: list[int]) -> list[float]:
    from llama_cpp import Llama

    llm = Llama(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=256, logits_all=True, verbose=False)
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: len(tokens)])
    return [float(log_softmax(scores[i])[tokens[i + 1]]) for i in range(len(tokens) - 1)]


def _echo_check(c: httpx.Client, model: str) -> str:
    from llama_cpp import Llama

    tokens = Llama(str(resolve("smollm2-135m-instruct-q4_1")), vocab_only=True, verbose=False).tokenize(
        SENTENCE.encode(), add_bos=False
    )
    r = c.post(
        "/v1/completions", json={"model": model, "prompt": SENTENCE, "max_tokens": 1, "echo": True, "logprobs": 1}
    )
    if r.status_code != 200:
        return f"no ({r.status_code})"
    got = r.json()["choices"][0]["logprobs"]["token_logprobs"][1 : len(tokens)]
    if len(got) != len(tokens) - 1 or any(v is None for v in got):
        return "no (missing logprobs)"
    # Flash attention on or off moves logprobs by ~0.05 nats on average; scoring the
    # wrong position moves them by several.
    error = float(np.mean(np.abs(np.array(got) - np.array(_reference_logprobs(tokens)))))
    return "ok" if error < 0.2 else f"no (off by {error:.1f} nats on average)"


def _n_choices(r: httpx.Response, n: int) -> str:
    return "ok" if r.status_code == 200 and len(r.json()["choices"]) == n else f"no ({r.status_code})"


def _usage_chunk(c: httpx.Client, model: str) -> str:
    body = {"model": model, "prompt": "hi", "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    with c.stream("POST", "/v1/completions", json=body) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    return "ok" if events and events[-1].get("usage") else "no"


def probe_contract(base: str, model: str) -> dict[str, str]:
    with httpx.Client(base_url=base, timeout=60) as c:

        def post(body: Any) -> httpx.Response:
            return c.post("/v1/completions", json=body)

        checks: dict[str, Callable[[], str]] = {
            "token-id prompt": lambda: _status(
                post({"model": model, "prompt": [504, 3575, 282], "max_tokens": 2}), 200
            ),
            "list of prompts": lambda: _n_choices(post({"model": model, "prompt": ["Hi", "Bye"], "max_tokens": 2}), 2),
            "bad JSON is 400": lambda: _status(
                c.post("/v1/completions", content=b"{bad json", headers={"content-type": "application/json"}), 400
            ),
            "unknown model is 404": lambda: _status(post({"model": "no-such-model", "prompt": "hi"}), 404),
            "temperature 9 is 400": lambda: _status(post({"model": model, "prompt": "hi", "temperature": 9}), 400),
            "max_tokens past the context is 400": lambda: _status(
                post({"model": model, "prompt": "hi", "max_tokens": 1_000_000}), 400
            ),
            "n=2 gives 2 choices": lambda: _n_choices(
                post({"model": model, "prompt": "hi", "max_tokens": 2, "n": 2}), 2
            ),
            "stream include_usage": lambda: _usage_chunk(c, model),
            "echo logprobs scored right": lambda: _echo_check(c, model),
            "/health": lambda: _status(c.get("/health"), 200),
        }
        out: dict[str, str] = {}
        for name, check in checks.items():
            try:
                out[name] = check()
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                out[name] = f"no ({type(exc).__name__})"
    return out
