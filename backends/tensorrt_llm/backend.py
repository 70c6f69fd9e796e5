"""The `tensorrt_llm` backend: TensorRT-LLM's `LLM` API, in-flight batching inside
the engine, streaming through `generate_async(..., streaming=True)`. GPU only, and
not installable from the package index these machines reach (it holds a
placeholder), so this module is written against the documented API and imports
`tensorrt_llm` only when the backend starts; without it the gateway refuses the
model with an error naming the package.

The other way to put TensorRT-LLM behind Lightgate: run `trtllm-serve MODEL` (its
own OpenAI-compatible server) and point an OpenAI-upstream model at it
(docs/operations.md).

Options go to `LLM(...)` as they are (tensor_parallel_size, dtype,
kv_cache_config, max_batch_size, max_num_tokens, ...). TensorRT-LLM's
SamplingParams has no logit bias, so a request with one is declared unsupported."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from backends import BackendUnavailable
from backends.base import (
    BackendError,
    BackendStats,
    Chunk,
    FinishReason,
    GenerationRequest,
    Kind,
    TokenLogprob,
    UnsupportedFeature,
    refuse_constraint,
    refuse_logits_processors,
)
from backends.hf_tokenizer import HfTokenizer, HfTokenizerMethods
from backends.logprobs import ranked_entry, ranked_prompt_entries
from backends.sampling import filters


class TensorRTLLMBackend(HfTokenizerMethods):
    name = "tensorrt_llm"
    kind = Kind.ENGINE

    def __init__(self, path: str | None = None, **options: object) -> None:
        if importlib.util.find_spec("tensorrt_llm") is None:
            raise BackendUnavailable(
                "the tensorrt_llm backend needs the tensorrt_llm package (NVIDIA's wheel, on a CUDA machine); "
                "or run trtllm-serve and use an OpenAI-upstream model"
            )
        if not path or not Path(path).is_dir():
            raise ValueError(f"the tensorrt_llm backend loads a Hugging Face folder or an engine folder; got {path!r}")
        self.path, self.options = path, dict(options)
        self._llm: Any = None
        self._running = 0
        self._generated = 0

    async def start(self) -> None:
        import asyncio

        from tensorrt_llm import LLM

        self._llm = await asyncio.to_thread(LLM, model=self.path, **self.options)
        self._tokenizer = HfTokenizer(self.path)
        self._max_len = int(getattr(self._llm.args, "max_seq_len", None) or 4096)

    async def stop(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if self._llm is None:
            raise BackendError("the tensorrt_llm backend is not started")
        p = req.params
        if p.logit_bias:
            raise UnsupportedFeature("TensorRT-LLM's SamplingParams has no logit bias", "logit_bias")
        refuse_logits_processors(p, self.name)
        refuse_constraint(p, self.name)
        from tensorrt_llm import SamplingParams

        f = filters(p)
        sampling = SamplingParams(
            max_tokens=max(1, p.max_tokens),
            temperature=f.temperature,
            top_k=f.top_k or None,
            top_p=f.top_p,
            min_p=f.min_p or None,
            seed=p.seed,
            stop=list(p.stop) or None,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            logprobs=p.logprobs,
            prompt_logprobs=p.prompt_logprobs,
            ignore_eos=p.ignore_eos,
            min_tokens=p.min_tokens,
            skip_special_tokens=False,
        )
        result = self._llm.generate_async(req.prompt_tokens, sampling_params=sampling, streaming=True)
        self._running += 1
        finished = False
        first_output = True
        try:
            async for out in result:
                seq = out.outputs[0]
                # The prompt's logprobs ride on the first chunk only (backends/base.py's Chunk).
                first = self._prompt_logprobs(req.prompt_tokens, seq, p.prompt_logprobs) if first_output else None
                first_output = False
                if p.max_tokens == 0:  # echo only: the engine's token is dropped, its request aborted
                    yield Chunk.prompt_only(first)
                    return
                tokens = list(seq.token_ids_diff)
                self._generated += len(tokens)
                finish: FinishReason | None = None
                if out.finished:
                    finished = True
                    finish = "length" if seq.finish_reason == "length" else "stop"
                logprobs = self._logprobs(tokens, seq.logprobs_diff, p.logprobs) if p.logprobs is not None else None
                yield Chunk(tokens, seq.text_diff, logprobs, finish, first)
        finally:
            self._running -= 1
            if not finished:
                result.abort()  # a client gone: the engine drops the request

    def _logprobs(self, tokens: list[int], rows: list[Any], k: int) -> list[TokenLogprob]:
        return [ranked_entry(t, row, k, self.token_bytes) for t, row in zip(tokens, rows, strict=True)]

    def _prompt_logprobs(self, prompt: list[int], seq: Any, k: int | None) -> list[TokenLogprob] | None:
        return ranked_prompt_entries(prompt, getattr(seq, "prompt_logprobs", None), k, self.token_bytes)

    def stats(self) -> BackendStats:
        import torch

        return BackendStats(
            running=self._running,
            max_running=int(self.options.get("max_batch_size", 256)),  # type: ignore[call-overload]
            running_memory_bytes=int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None,
            generated_tokens=self._generated,
        )
