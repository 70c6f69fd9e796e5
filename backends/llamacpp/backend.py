"""The `llamacpp` backend: GGUF models on llama.cpp, with continuous batching.

A scheduler thread owns the llama.cpp context and decodes every running sequence
in one batch per step (backends/llamacpp/scheduler.py); requests reach it through a
queue and their chunks come back to the event loop thread-safely, so the loop never
blocks on the engine. A request whose consumer goes away is marked cancelled; the
scheduler drops it before the next step and frees its KV cells."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from backends.base import (
    BackendError,
    BackendStats,
    Chunk,
    GenerationRequest,
    Kind,
    PrefixCacheStats,
    SpeculativeStats,
    engine_config,
)
from backends.engine_thread import job_stream
from backends.llamacpp.engine import CACHE_TYPES, EngineConfig, LlamaEngine, LlamaVocab
from backends.llamacpp.prompt_store import PromptStore
from backends.llamacpp.scheduler import Scheduler
from backends.llamacpp.tokenizer import LlamaTokenizer, LlamaTokenizerMethods, chat_template_of, grammar_index
from backends.lookup import History, StepCost
from backends.memory import CUDA_CONTEXT_BYTES, peak_rss_bytes
from backends.structured import Grammars, constrained

# A worker process before its model: Python, numpy, llama.cpp's library, llguidance
# (53 MiB measured), with room for the grammar index and the request state.
_WORKER_LIBRARIES = 64 * 2**20


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(slots=True)
class LlamaCppConfig:
    path: str
    n_ctx: int = 2048  # context of each sequence (the longest prompt + output)
    n_parallel: int = 8  # sequences decoded together; each has its own n_ctx of KV cells
    n_batch: int = 512  # tokens per step: every running sequence's next one, then prompt chunks
    # Prompt tokens a step takes from standard and batch requests (0: n_batch); an
    # interactive prompt takes the whole n_batch. Small keeps steps short for interactive keys.
    prompt_chunk: int = 0
    n_threads: int = 0  # 0: every core this process may run on
    n_threads_batch: int = 0  # 0: same as n_threads
    n_gpu_layers: int = 0  # layers offloaded to a GPU (a CUDA/Metal build); -1: all
    use_mmap: bool = True
    # Flash attention; None: llama.cpp's choice (on for a CPU). Either way moves logits
    # slightly. On a CPU, off pays where steps of a few to ~60 rows meet long contexts
    # (ggml's flash attention takes such rows one at a time): a 40-token chat turn after
    # 800-1,600 cached tokens in 0.44-0.87x the time; and costs on one-row decode steps
    # at short contexts and on long prompts (its tiled path, from 64 rows): up to 1.4x
    # and 1.5x (benchmarks/kv_layout.py, two runs in docs/benchmarks.md).
    flash_attn: bool | None = None
    prefix_cache: bool = True  # a prompt reuses the KV of whatever slot holds its prefix
    # Host memory for prompts' KV once their slot serves others (llama-server's --cache-ram); 0: off.
    cache_ram_mib: int = 256
    # One KV stream for all slots: a shared prefix is held once, not copied per slot; but
    # a sequence's attention then reduces over cells laid out beside other sequences', so
    # its greedy output can differ from its output alone. Off: each slot its own stream.
    # None: on with `speculate: ngram`, off without. With a stream per slot llama.cpp
    # splits a batch into a weight pass per run of sequences with as many rows, so one
    # sequence's draft costs a second pass: at c4 on Qwen2.5-0.5B, WikiText continuations
    # drafted at 0.99x the speed without drafts in separate streams, 1.16x in one.
    kv_unified: bool | None = None
    cache_type_k: str = "f16"  # KV cell types, as llama-server's --cache-type-k/-v: f16, q8_0, q4_0, ...
    cache_type_v: str = "f16"  # a quantized V needs flash attention (on for CPU by default)
    speculate: str = "none"  # "ngram": prompt-lookup drafts for every decoding sequence, verified in the batch
    draft_max: int = 64  # with speculate: the most draft tokens a sequence adds to a step (as ngram-mod's 64)
    # With speculate: tokens of finished requests' answers (each with its prompt's last
    # tokens) kept to draft from, so a request sent again has its earlier answer drafted;
    # 0: each its own text. Like the prefix cache it is shared by every request the model
    # serves. ~300 bytes a token: 19 MiB at the default.
    speculate_history: int = 65536
    verbose: bool = False

    def __post_init__(self) -> None:
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if self.n_ctx < 16 or self.n_batch < 1 or self.n_parallel < 1:
            raise ValueError("n_ctx must be >= 16, n_batch and n_parallel >= 1")
        if self.n_batch < self.n_parallel:
            raise ValueError("n_batch must be >= n_parallel: every running sequence needs a row per step")
        if self.cache_ram_mib < 0:
            raise ValueError("cache_ram_mib must be >= 0 (0: no prompt store)")
        if self.prompt_chunk < 0:
            raise ValueError("prompt_chunk must be >= 0 (0: n_batch)")
        if self.speculate not in ("none", "ngram"):
            raise ValueError("speculate must be none or ngram (prompt lookup)")
        if self.kv_unified is None:
            self.kv_unified = self.speculate == "ngram"
        if self.draft_max < 1:
            raise ValueError("draft_max must be >= 1")
        if self.speculate_history < 0:
            raise ValueError("speculate_history must be >= 0 (0: no history)")
        for name in ("cache_type_k", "cache_type_v"):
            if getattr(self, name) not in CACHE_TYPES:
                raise ValueError(f"{name} must be one of {', '.join(CACHE_TYPES)}")
        if self.cache_type_v not in ("f16", "f32") and self.flash_attn is False:
            raise ValueError("a quantized cache_type_v needs flash attention (flash_attn: false was set)")
        self.n_threads = self.n_threads or _usable_cores()
        self.n_threads_batch = self.n_threads_batch or self.n_threads


class LlamaCppBackend(LlamaTokenizerMethods):
    name = "llamacpp"
    kind = Kind.ENGINE
    embedder = "backends.llamacpp.embedder:LlamaCppEmbedder"  # for models whose task is embed
    tokenizer_class = LlamaTokenizer  # tokenizes without the engine (a model in a worker process)

    def __init__(self, path: str | None = None, **options: object) -> None:
        if not path:
            raise ValueError("the llamacpp backend needs a model path (a .gguf file)")
        self.config = engine_config(LlamaCppConfig, "llamacpp", options, path=path)
        self._engine: LlamaEngine | None = None
        self._scheduler: Scheduler | None = None
        self._grammars: Grammars | None = None

    @staticmethod
    def memory_estimate(path: str, options: dict[str, object]) -> int:
        """What a worker running this model will hold, before it has run (the memory
        budget's first guess): the weights (mapped, all read), every slot's KV cells
        (llama.cpp clears them at start, so all are resident), the logits of a full
        batch (the compute buffer is mostly those) and of one row per slot, the
        libraries, the prompt store's budget (it fills as prompts come and go), and
        with speculation its history of answers (it fills as requests finish).
        SmolLM2 Q4_1 with the defaults, the store aside: 615 MiB estimated, 574 MiB
        peak RSS measured after a generation (benchmarks/memory_estimate.py)."""
        c = engine_config(LlamaCppConfig, "llamacpp", dict(options), path=path)
        vocab = LlamaVocab(path)  # vocabulary and metadata only: a few MB, tens of ms
        try:
            cell, n_vocab = vocab.kv_cell_bytes(c.cache_type_k, c.cache_type_v), vocab.n_vocab
        finally:
            vocab.close()
        logits = (c.n_batch + c.n_parallel) * n_vocab * 4
        store = c.cache_ram_mib * 2**20 if c.prefix_cache else 0
        history = c.speculate_history * History.TOKEN_BYTES if c.speculate == "ngram" else 0
        kv = c.n_parallel * c.n_ctx * cell
        return Path(path).stat().st_size + kv + logits + store + history + _WORKER_LIBRARIES

    @staticmethod
    def gpu_memory_estimate(path: str, options: dict[str, object]) -> dict[int, int]:
        """GPU memory by device, before it has run: with `n_gpu_layers`, that share of
        the weights (the output layer counts as one more, as llama.cpp counts it), the
        offloaded layers' KV cells, the compute buffers and the CUDA context. Placed on
        GPU 0: llama.cpp spreads layers over every visible GPU, and the first run's
        measurement, GPU by GPU, replaces this. Host memory stays `memory_estimate`'s
        (an upper bound: offloaded KV cells are counted there too)."""
        c = engine_config(LlamaCppConfig, "llamacpp", dict(options), path=path)
        if c.n_gpu_layers == 0:
            return {}
        vocab = LlamaVocab(path)
        try:
            n_layer = vocab.hparam("block_count") or 1
            cell, n_vocab = vocab.kv_cell_bytes(c.cache_type_k, c.cache_type_v), vocab.n_vocab
        finally:
            vocab.close()
        layers = n_layer + 1 if c.n_gpu_layers < 0 else min(c.n_gpu_layers, n_layer + 1)
        weights = Path(path).stat().st_size * layers // (n_layer + 1)
        kv = c.n_parallel * c.n_ctx * cell * min(layers, n_layer) // n_layer
        logits = (c.n_batch + c.n_parallel) * n_vocab * 4
        return {0: weights + kv + logits + CUDA_CONTEXT_BYTES}

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        settings = EngineConfig(
            path=c.path,
            n_ctx_seq=c.n_ctx,
            n_batch=c.n_batch,
            n_seq_max=c.n_parallel,
            n_threads=c.n_threads,
            n_threads_batch=c.n_threads_batch,
            n_gpu_layers=c.n_gpu_layers,
            use_mmap=c.use_mmap,
            flash_attn=c.flash_attn,
            verbose=c.verbose,
            kv_unified=bool(c.kv_unified),  # None resolved in __post_init__
            type_k=CACHE_TYPES[c.cache_type_k],
            type_v=CACHE_TYPES[c.cache_type_v],
        )
        self._engine = engine = await asyncio.to_thread(LlamaEngine, settings)
        self._chat_template = chat_template_of(engine)
        self._grammars = Grammars(lambda: grammar_index(engine), engine.n_vocab)
        await asyncio.to_thread(self._grammars.warm)
        draft_max = c.draft_max if c.speculate == "ngram" else 0
        store = PromptStore(c.cache_ram_mib * 2**20) if c.cache_ram_mib else None
        self._scheduler = Scheduler(
            self._engine, c.n_parallel, c.prefix_cache, draft_max, c.prompt_chunk, store, c.speculate_history
        )
        # With speculation the loop first times a ladder of step sizes (+1.5 s to start
        # SmolLM2, +3.3 s Qwen2.5-0.5B, on 2 cores) to price the first drafts.
        await asyncio.to_thread(self._scheduler.start)

    async def stop(self) -> None:
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.stop)
            self._scheduler = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def engine(self) -> LlamaEngine:
        if self._engine is None:
            raise BackendError("the llamacpp backend is not started")
        return self._engine

    @property
    def step_cost(self) -> StepCost | None:
        """What this backend's decode steps cost by their rows on this machine, as its
        speculation prices drafts (benchmarks/lookup_ceiling.py reads it); None before
        start or without speculation."""
        sched = self._scheduler
        return sched.cost if sched is not None and sched.draft_max else None

    # -- the interface the gateway uses ---------------------------------------------

    @property
    def max_model_len(self) -> int:
        return self.engine.n_ctx_seq

    def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        scheduler, grammars = self._scheduler, self._grammars
        if scheduler is None or grammars is None:
            raise BackendError("the llamacpp backend is not started")
        if req.params.constraint is not None:
            return constrained(req, grammars, lambda r: job_stream(r, scheduler.submit))
        return job_stream(req, scheduler.submit)

    def stats(self) -> BackendStats:
        c, sched = self.config, self._scheduler
        if sched is None:
            return BackendStats(max_running=c.n_parallel)
        return BackendStats(
            running=len(sched.running),
            waiting=sched.jobs.qsize(),
            max_running=c.n_parallel,
            kv_cache_usage=sched.kv_cells_used / (c.n_ctx * c.n_parallel),
            weight_bytes=self.engine.weight_bytes,
            # On the CPU the engine's memory is this process's; with layers on a GPU
            # llama.cpp does not report device memory through these bindings.
            running_memory_bytes=peak_rss_bytes() if c.n_gpu_layers == 0 else None,
            generated_tokens=sched.generated_tokens,
            prefix_cache=PrefixCacheStats(sched.cache_queries, sched.cache_hits) if c.prefix_cache else None,
            speculative=(
                SpeculativeStats(sched.drafts, sched.draft_tokens, sched.accepted_tokens) if sched.draft_max else None
            ),
        )
