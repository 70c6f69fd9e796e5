"""The `llamacpp` backend for an embedding model (task `embed`): a GGUF in an embedding
context, pooled the way the GGUF declares (mean, CLS, last token), the inputs of
concurrent requests packed into one `llama_decode` by the shared batcher."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from backends.base import BackendError, BackendStats, Kind, engine_config
from backends.embedding import EmbedBatcher, Vectors, normalized
from backends.llamacpp.engine import EngineConfig, LlamaEngine
from backends.llamacpp.tokenizer import LlamaTokenizerMethods
from backends.memory import peak_rss_bytes


@dataclass(slots=True)
class LlamaEmbedConfig:
    path: str
    # Tokens per llama_decode, and the longest input: a non-causal model attends over
    # the whole batch (masked), so a bigger batch costs more per token (llama-server's
    # default ubatch is 512 too).
    n_batch: int = 512
    n_seq_max: int = 64  # inputs per batch
    normalize: bool = True  # L2-normalize each vector (sentence-transformers' Normalize; llama-server's default)
    n_threads: int = 0
    n_gpu_layers: int = 0
    use_mmap: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if self.n_batch < 16 or not 1 <= self.n_seq_max <= 256:
            raise ValueError("n_batch must be >= 16 and n_seq_max between 1 and 256")


class LlamaCppEmbedder(LlamaTokenizerMethods):
    name = "llamacpp"
    kind = Kind.ENGINE

    def __init__(self, path: str | None = None, **options: object) -> None:
        if not path:
            raise ValueError("the llamacpp backend needs a model path (a .gguf file)")
        self.config = engine_config(LlamaEmbedConfig, "llamacpp (embed)", options, path=path)
        self._engine: LlamaEngine | None = None
        self._batcher: EmbedBatcher | None = None

    async def start(self) -> None:
        from backends.llamacpp.backend import _usable_cores

        c = self.config
        threads = c.n_threads or _usable_cores()
        settings = EngineConfig(
            path=c.path,
            n_ctx_seq=c.n_batch,
            n_batch=c.n_batch,
            n_seq_max=c.n_seq_max,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=c.n_gpu_layers,
            use_mmap=c.use_mmap,
            flash_attn=None,
            verbose=c.verbose,
            embeddings=True,
        )
        self._engine = engine = await asyncio.to_thread(LlamaEngine, settings)
        if engine.pooling == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            engine.close()
            self._engine = None
            raise ValueError(f"{c.path} declares no pooling: it gives a vector per token, not an embedding")
        self._batcher = EmbedBatcher("llamacpp-embed", self._forward, c.n_seq_max, c.n_batch)
        self._batcher.start()

    async def stop(self) -> None:
        if self._batcher is not None:
            await asyncio.to_thread(self._batcher.stop)
            self._batcher = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def engine(self) -> LlamaEngine:
        if self._engine is None:
            raise BackendError("the llamacpp backend is not started")
        return self._engine

    async def embed(self, inputs: list[list[int]]) -> Vectors:
        if self._batcher is None:
            raise BackendError("the llamacpp backend is not started")
        return await self._batcher.submit(inputs)

    def _forward(self, batch: list[list[int]]) -> Vectors:
        """One llama_decode over every input of the batch, each its own sequence."""
        engine = self.engine
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        for seq, ids in enumerate(batch):
            tokens += ids
            positions += range(len(ids))
            seq_ids += [seq] * len(ids)
        try:
            engine.decode(tokens, positions, seq_ids, [True] * len(tokens))
            rows = np.stack([engine.pooled(seq) for seq in range(len(batch))])
        finally:
            engine.clear()
        return normalized(rows) if self.config.normalize else rows

    @property
    def max_model_len(self) -> int:
        train = int(llama_cpp.llama_model_n_ctx_train(self.engine.model))
        return min(train, self.config.n_batch) if train > 0 else self.config.n_batch

    @property
    def embedding_dim(self) -> int:
        return self.engine.n_embd

    def stats(self) -> BackendStats:
        c, batcher = self.config, self._batcher
        if batcher is None or self._engine is None:
            return BackendStats(max_running=c.n_seq_max)
        return BackendStats(
            running=batcher.running,
            waiting=batcher.waiting,
            max_running=c.n_seq_max,
            weight_bytes=self._engine.weight_bytes,
            running_memory_bytes=peak_rss_bytes() if c.n_gpu_layers == 0 else None,
        )
