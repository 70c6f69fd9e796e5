"""The `transformers` backend: the PyTorch baseline the survey measured every
compression against. A Hugging Face folder (bf16 export, pruned, quanto int8/int4,
GPTQ/AWQ in compressed-tensors) on the CPU here, on CUDA where there is one.

One worker thread runs one sequence at a time, the way `model.generate` serves a
request: that is the baseline, not a batching engine. It runs the decode loop
itself (a forward over the prompt, then one token per forward with the KV cache)
rather than calling `generate` with a streamer, because the gateway needs what
`generate` keeps inside: the raw logits of every step for logprobs, the prompt's
logits for echo, a cancellation check between tokens, and the same sampling order
as every other backend: the reference's (backends/sampling.py), on each row as a
NumPy array, its logits processors included."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from backends.base import BackendError, BackendStats, Chunk, GenerationRequest, Kind, TokenLogprob, engine_config
from backends.engine_thread import Job, Outbox, Worker, job_stream
from backends.hf_tokenizer import HfTokenizer, HfTokenizerMethods
from backends.logprobs import entry, first_prompt_entry
from backends.memory import cuda_index, gpu_count, peak_rss_bytes
from backends.sampling import distribution, draw
from backends.structured import Grammars, constrained
from backends.textstream import TextStream
from backends.transformers.model import gpu_memory_estimate, host_memory_estimate, load_causal_lm, placement


@dataclass(slots=True)
class TransformersConfig:
    path: str
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU (faster there than bf16); quanto keeps its own
    max_model_len: int = 2048  # capped at the model's max_position_embeddings
    n_threads: int = 0  # torch's intra-op threads; 0: torch's default (every core)

    def __post_init__(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"the transformers backend loads a Hugging Face folder; {self.path} is not one")
        if self.max_model_len < 16:
            raise ValueError("max_model_len must be >= 16")


class TransformersBackend(HfTokenizerMethods):
    name = "transformers"
    kind = Kind.ENGINE
    embedder = "backends.transformers.embedder:TransformersEmbedder"  # for models whose task is embed

    def __init__(self, path: str | None = None, **options: object) -> None:
        if not path:
            raise ValueError("the transformers backend needs a model path (a Hugging Face folder)")
        self.config = engine_config(TransformersConfig, "transformers", options, path=path)
        self._model: Any = None
        self._tokenizer: HfTokenizer | None = None
        self._device = "cpu"
        self._bytes: list[bytes] = []
        self._eos: list[int] = []
        self._max_len = self.config.max_model_len
        self._cache_arg = "cache"
        self._worker: Worker | None = None
        self._grammars: Grammars | None = None
        self._generated = 0
        self._weight_bytes: int | None = None

    @staticmethod
    def memory_estimate(path: str, options: dict[str, object]) -> int:
        """Host memory a worker running this folder will hold, before it has run (the
        CPU's; a model placed on a GPU holds less here)."""
        c = engine_config(TransformersConfig, "transformers", dict(options), path=path)
        return host_memory_estimate(Path(c.path), c.dtype, c.max_model_len)

    @staticmethod
    def gpu_memory_estimate(path: str, options: dict[str, object]) -> dict[int, int]:
        """GPU memory by device, before it has run: none on the CPU; `auto` places it
        on GPU 0 when NVML sees one (torch's own test would import torch here)."""
        c = engine_config(TransformersConfig, "transformers", dict(options), path=path)
        index = cuda_index("cuda" if c.device == "auto" and gpu_count() else c.device)
        if index is None:
            return {}
        return {index: gpu_memory_estimate(Path(c.path), c.dtype, c.max_model_len)}

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._grammars = Grammars(self._grammar_index, int(self._model.config.vocab_size))
        await asyncio.to_thread(self._grammars.warm)
        self._worker = Worker("transformers-worker", self._run)
        self._worker.start()

    def _load(self) -> None:
        c = self.config
        self._device, dtype = placement(c.device, c.dtype, c.n_threads)
        self._model, tok = load_causal_lm(Path(c.path), dtype, self._device)
        self._weight_bytes = int(self._model.get_memory_footprint())  # the weights as loaded: fixed
        self._tokenizer = HfTokenizer(c.path, tok)
        self._bytes, self._eos = self._tokenizer.bytes, self._tokenizer.eos_ids
        # transformers 5.2x renamed forward's `past_key_values` to `cache`; take either.
        self._cache_arg = "cache" if "cache" in inspect.signature(self._model.forward).parameters else "past_key_values"
        limit = getattr(self._model.config, "max_position_embeddings", None)
        self._max_len = min(c.max_model_len, limit) if limit else c.max_model_len

    async def stop(self) -> None:
        if self._worker is not None:
            await asyncio.to_thread(self._worker.stop)
            self._worker = None
        self._model = None

    # -- the interface the gateway uses ---------------------------------------------

    def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        worker, grammars = self._worker, self._grammars
        if worker is None or grammars is None:
            raise BackendError("the transformers backend is not started")
        if req.params.constraint is not None:
            return constrained(req, grammars, lambda r: job_stream(r, worker.jobs.put))
        return job_stream(req, worker.jobs.put)

    def _grammar_index(self) -> Any:
        """llguidance's index of the vocabulary, as wide as the model's logits."""
        from llguidance.hf import from_tokenizer

        return from_tokenizer(self.tokenizer.hf, n_vocab=int(self._model.config.vocab_size), eos_token=self._eos)

    def stats(self) -> BackendStats:
        running_memory = peak_rss_bytes()
        if self._device == "cuda":
            import torch

            running_memory = int(torch.cuda.max_memory_allocated())
        return BackendStats(
            running=self._worker.running if self._worker else 0,
            waiting=self._worker.jobs.qsize() if self._worker else 0,
            max_running=1,
            weight_bytes=self._weight_bytes,
            running_memory_bytes=running_memory,
            generated_tokens=self._generated,
        )

    def _run(self, job: Job, outbox: Outbox) -> None:
        import torch
        from transformers import DynamicCache

        params, prompt = job.req.params, job.req.prompt_tokens
        rng = np.random.default_rng(params.seed)
        stream = TextStream(stop=list(params.stop))
        # no_grad, not inference_mode: quanto's int4 weights set a version counter on the
        # tensors they unpack, which inference tensors refuse ("Cannot set version_counter").
        with torch.no_grad():
            # Every prompt row's logits only when echo asks for them; else the last row.
            keep = 0 if params.prompt_logprobs is not None else 1
            cache = {self._cache_arg: DynamicCache(config=self._model.config)}  # filled in place by each forward
            out = self._model(torch.tensor([prompt], device=self._device), logits_to_keep=keep, **cache)
            prompt_logprobs = self._prompt_logprobs(prompt, out.logits[0], params.prompt_logprobs)
            if params.max_tokens == 0:  # echo only: the prompt was all that was asked
                outbox.put(job, Chunk.prompt_only(prompt_logprobs))
                return
            row = _as_numpy(out.logits[0, -1])
            generated: list[int] = []
            while not job.cancelled.is_set():
                token = draw(distribution(row, params, generated, self._eos), rng)
                generated.append(token)
                self._generated += 1
                last = len(generated) == params.max_tokens or len(prompt) + len(generated) >= self._max_len
                text, finish = stream.token(self._bytes[token], eos=token in self._eos, last=last)
                logprobs = (
                    [entry(row, token, params.logprobs, self.token_bytes)] if params.logprobs is not None else None
                )
                first = prompt_logprobs if len(generated) == 1 else None
                outbox.put(job, Chunk([token], text, logprobs, finish, first))
                outbox.flush()
                if finish is not None:
                    return
                step = torch.tensor([[token]], device=self._device)
                row = _as_numpy(self._model(step, **cache).logits[0, -1])

    def _prompt_logprobs(self, prompt: list[int], logits: Any, k: int | None) -> list[TokenLogprob] | None:
        if k is None:
            return None
        rows = _as_numpy(logits)  # row i predicts token i+1
        tail = [entry(rows[i], prompt[i + 1], k, self.token_bytes) for i in range(len(prompt) - 1)]
        return [first_prompt_entry(prompt, self.token_bytes), *tail]


def _as_numpy(logits: Any) -> npt.NDArray[np.float32]:
    """Logits as float32 NumPy: a view on the CPU; from a GPU, a copy (a row is a few
    hundred KB, next to a forward pass over the whole model)."""
    return np.asarray(logits.detach().float().cpu().numpy(), dtype=np.float32)
