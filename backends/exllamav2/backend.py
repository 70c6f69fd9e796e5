"""The `exllamav2` backend: ExLlamaV2's dynamic generator (paged KV cache,
continuous batching, fused CUDA kernels) through its async wrapper, on EXL2 or
GPTQ folders. GPU only: exllamav2 JIT-compiles its CUDA extension on import, so
it is imported when the backend starts, never before; `scripts/gpu_check.sh` runs
the conformance suite on it on a lent GPU machine.

Sampling is exllamav2's own (`ExLlamaV2Sampler.Settings`, every field set, since
its defaults are not neutral: top_k 50, top_p 0.8, repetition penalty 1.025).
Logprobs come from the raw logits the generator returns per token
(`return_logits`); the generator does not return prompt logits, so echo with
logprobs is declared unsupported (400) rather than computed a second way."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import AsyncGenerator
from dataclasses import dataclass
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
    UnsupportedFeature,
    engine_config,
    refuse_constraint,
    refuse_logits_processors,
)
from backends.hf_tokenizer import HfTokenizer, HfTokenizerMethods
from backends.logprobs import entry
from backends.sampling import filters


@dataclass(slots=True)
class ExLlamaV2Config:
    path: str
    max_seq_len: int = 4096  # per sequence
    cache_tokens: int = 0  # paged KV cache size in tokens; 0: max_seq_len * max_batch_size
    max_batch_size: int = 16
    max_chunk_size: int = 2048  # prefill chunk
    cache_quant: str | None = None  # None (FP16), "Q4", "Q6", "Q8": ExLlamaV2Cache_Q4 etc.

    def __post_init__(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"the exllamav2 backend loads an EXL2 or GPTQ folder; {self.path} is not one")
        if self.cache_quant not in (None, "Q4", "Q6", "Q8"):
            raise ValueError("cache_quant is one of Q4, Q6, Q8 (or unset for FP16)")


class ExLlamaV2Backend(HfTokenizerMethods):
    name = "exllamav2"
    kind = Kind.ENGINE

    def __init__(self, path: str | None = None, **options: object) -> None:
        if importlib.util.find_spec("exllamav2") is None:
            raise BackendUnavailable("the exllamav2 backend needs exllamav2 (pip install exllamav2) and a CUDA GPU")
        if not path:
            raise ValueError("the exllamav2 backend needs a model path (an EXL2 or GPTQ folder)")
        self.config = engine_config(ExLlamaV2Config, "exllamav2", options, path=path)
        self._generator: Any = None
        self._ids = itertools.count()
        self._generated = 0

    async def start(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("the exllamav2 backend needs a CUDA GPU; torch sees none")
        import exllamav2
        from exllamav2.generator import ExLlamaV2DynamicGeneratorAsync

        c = self.config
        config = exllamav2.ExLlamaV2Config(c.path)
        config.max_seq_len = c.max_seq_len
        model = exllamav2.ExLlamaV2(config)
        cache_class = (
            getattr(exllamav2, f"ExLlamaV2Cache_{c.cache_quant}") if c.cache_quant else exllamav2.ExLlamaV2Cache
        )
        cache = cache_class(model, max_seq_len=c.cache_tokens or c.max_seq_len * c.max_batch_size, lazy=True)
        model.load_autosplit(cache, progress=False)
        self._model, self._cache = model, cache
        self._generator = ExLlamaV2DynamicGeneratorAsync(
            model=model,
            cache=cache,
            tokenizer=exllamav2.ExLlamaV2Tokenizer(config),
            max_batch_size=c.max_batch_size,
            max_chunk_size=c.max_chunk_size,
            paged=True,
        )
        self._tokenizer = HfTokenizer(c.path)
        self._max_len = c.max_seq_len

    async def stop(self) -> None:
        if self._generator is not None:
            await self._generator.close()
            self._generator = None
            self._model.unload()

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if self._generator is None:
            raise BackendError("the exllamav2 backend is not started")
        p = req.params
        if p.prompt_logprobs is not None:
            raise UnsupportedFeature("exllamav2's generator does not return the prompt's logits (echo with logprobs)")
        refuse_logits_processors(p, self.name)
        refuse_constraint(p, self.name)
        import torch
        from exllamav2.generator import ExLlamaV2DynamicJobAsync

        if p.max_tokens == 0:
            yield Chunk.prompt_only(None)
            return
        eos = self.tokenizer.eos_ids
        job = ExLlamaV2DynamicJobAsync(
            self._generator,
            input_ids=torch.tensor([req.prompt_tokens], dtype=torch.long),
            max_new_tokens=p.max_tokens,
            min_new_tokens=p.min_tokens,
            gen_settings=self._settings(req),
            seed=p.seed,
            stop_conditions=[*list(p.stop), *([] if p.ignore_eos else eos)],
            decode_special_tokens=True,
            return_logits=p.logprobs is not None,
            identifier=f"{req.request_id}-{next(self._ids)}",
        )
        finished = False
        try:
            async for result in job:
                if result.get("stage") != "streaming":
                    continue
                ids = result.get("token_ids")
                tokens = [int(t) for t in ids[0].tolist()] if ids is not None else []
                self._generated += len(tokens)
                finish: FinishReason | None = None
                if result.get("eos"):
                    finished = True
                    finish = "length" if result.get("eos_reason") == "max_new_tokens" else "stop"
                logprobs = None
                if p.logprobs is not None and tokens:
                    rows = result["logits"][0].float().cpu().numpy()  # raw logits, one row per token
                    logprobs = [
                        entry(row, t, p.logprobs, self.token_bytes) for row, t in zip(rows, tokens, strict=True)
                    ]
                if tokens or finish is not None:
                    yield Chunk(tokens, result.get("text", ""), logprobs, finish)
        finally:
            if not finished:
                await job.cancel()  # a client gone: free the job's pages now

    def _settings(self, req: GenerationRequest) -> Any:
        import torch
        from exllamav2.generator import ExLlamaV2Sampler

        p = req.params
        f = filters(p)
        s = ExLlamaV2Sampler.Settings()
        s.temperature = f.temperature or 1.0  # its sampler divides by it; greedy is top_k 1 alone
        s.top_k, s.top_p, s.min_p = f.top_k, f.top_p, f.min_p
        s.token_repetition_penalty = p.repetition_penalty
        s.token_frequency_penalty = p.frequency_penalty
        s.token_presence_penalty = p.presence_penalty
        s.token_repetition_range = -1  # the whole sequence, as the other backends
        if p.logit_bias:
            bias = torch.zeros(self.vocab_size, dtype=torch.float)
            for token, value in p.logit_bias.items():
                bias[token] = value
            s.token_bias = bias
        return s

    def stats(self) -> BackendStats:
        g = self._generator
        return BackendStats(
            running=len(g.active_jobs) if g else 0,
            waiting=len(g.pending_jobs) if g else 0,
            max_running=self.config.max_batch_size,
            weight_bytes=sum(f.stat().st_size for f in Path(self.config.path).glob("*.safetensors")),
            running_memory_bytes=_cuda_peak(),
            generated_tokens=self._generated,
        )


def _cuda_peak() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
