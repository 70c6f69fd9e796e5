"""The `llamacpp` backend: GGUF models on llama.cpp, one sequence at a time.

A single decode thread owns the llama.cpp context; requests reach it through a
queue and their chunks come back to the event loop thread-safely, so the loop never
blocks on the engine. A request whose consumer goes away is marked cancelled and
the thread stops it at the next token, freeing its KV cells at once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backends.base import (
    BackendError,
    BackendStats,
    ChatTemplateInfo,
    Chunk,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
)
from backends.llamacpp.engine import EngineConfig, LlamaEngine
from backends.llamacpp.sampler import SamplerChain, sampler_steps
from backends.logprobs import log_softmax, top_k
from backends.textstream import TextStream

_SEQ = 0  # the one sequence this backend decodes at a time


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(slots=True)
class LlamaCppConfig:
    path: str
    n_ctx: int = 2048
    n_batch: int = 512
    n_threads: int = 0  # 0: every core this process may run on
    n_threads_batch: int = 0  # 0: same as n_threads
    n_gpu_layers: int = 0  # layers offloaded to a GPU (a CUDA/Metal build); -1: all
    use_mmap: bool = True
    flash_attn: bool | None = None  # None: llama.cpp's choice (on for CPU); changes logits slightly
    verbose: bool = False

    def __post_init__(self) -> None:
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if self.n_ctx < 16 or self.n_batch < 1:
            raise ValueError("n_ctx must be >= 16 and n_batch >= 1")
        self.n_threads = self.n_threads or _usable_cores()
        self.n_threads_batch = self.n_threads_batch or self.n_threads


@dataclass(slots=True)
class _Job:
    req: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Chunk | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, item: Chunk | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, path: str | None = None, **options: object) -> None:
        if not path:
            raise ValueError("the llamacpp backend needs a model path (a .gguf file)")
        known = {f.name for f in dataclasses.fields(LlamaCppConfig)} - {"path"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown llamacpp options {unknown}; known: {sorted(known)}")
        self.config = LlamaCppConfig(path=path, **options)  # type: ignore[arg-type]
        self._engine: LlamaEngine | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = 0
        self._kv_used = 0
        self._generated = 0

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        engine_config = EngineConfig(
            path=c.path,
            n_ctx=c.n_ctx,
            n_batch=c.n_batch,
            n_seq_max=1,
            n_threads=c.n_threads,
            n_threads_batch=c.n_threads_batch,
            n_gpu_layers=c.n_gpu_layers,
            use_mmap=c.use_mmap,
            flash_attn=c.flash_attn,
            verbose=c.verbose,
        )
        self._engine = await asyncio.to_thread(LlamaEngine, engine_config)
        self._thread = threading.Thread(target=self._worker, name="llamacpp-decode", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def engine(self) -> LlamaEngine:
        if self._engine is None:
            raise BackendError("the llamacpp backend is not started")
        return self._engine

    # -- the interface the gateway uses ---------------------------------------------

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        job = _Job(req, asyncio.get_running_loop())
        self._jobs.put(job)
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled.set()

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        tokens = self.engine.tokenize(text, add_special=True, parse_special=special)
        bos = self.engine.bos_id
        if special and len(tokens) > 1 and tokens[0] == tokens[1] == bos:
            tokens = tokens[1:]  # the template wrote a BOS and llama.cpp added one too
        return tokens

    def detokenize(self, token_ids: list[int]) -> str:
        return self.engine.detokenize(token_ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.engine.piece(token_id)

    @property
    def vocab_size(self) -> int:
        return int(self.engine.n_vocab)

    @property
    def max_model_len(self) -> int:
        return int(self.engine.n_ctx)

    @property
    def chat_template(self) -> ChatTemplateInfo | None:
        e = self.engine
        source = e.metadata("tokenizer.chat_template")
        if not source:
            return None
        eos = int(e.eog_ids[0]) if e.eog_ids else -1
        return ChatTemplateInfo(source=source, bos_token=e.token_text(e.bos_id), eos_token=e.token_text(eos))

    def stats(self) -> BackendStats:
        n_ctx = self._engine.n_ctx if self._engine else self.config.n_ctx
        return BackendStats(
            running=self._running,
            waiting=self._jobs.qsize(),
            max_running=1,
            kv_cache_usage=self._kv_used / n_ctx,
            weight_bytes=self._engine.weight_bytes if self._engine else None,
            generated_tokens=self._generated,
        )

    # -- the decode thread ------------------------------------------------------------

    def _worker(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            self._running = 1
            try:
                self._generate(job)
            except _Cancelled:
                pass
            except Exception as exc:  # an engine failure ends this request, not the thread
                job.send(BackendError(f"llama.cpp failed: {exc}"))
            finally:
                self.engine.free_sequence(_SEQ)
                self._kv_used = 0
                self._running = 0

    def _generate(self, job: _Job) -> None:
        e = self.engine
        params = job.req.params
        prompt = job.req.prompt_tokens
        if not prompt:
            raise BackendError("empty prompt")
        prompt_logprobs, index = self._prefill(prompt, params.prompt_logprobs, job.cancelled)
        if params.max_tokens == 0:
            job.send(Chunk([], "", finish_reason="length", prompt_logprobs=prompt_logprobs))
            return
        chain = SamplerChain(sampler_steps(params, penalty_window=e.n_ctx), e.n_vocab)
        try:
            self._decode_loop(job, chain, prompt_logprobs, index)
        finally:
            chain.close()

    def _prefill(
        self, prompt: list[int], want_logprobs: int | None, cancelled: threading.Event
    ) -> tuple[list[TokenLogprob] | None, int]:
        """Evaluate the prompt in n_batch chunks. Returns the prompt's logprobs (when
        asked) and the batch index whose logits predict the first new token."""
        e = self.engine
        scored: list[TokenLogprob] | None = None
        if want_logprobs is not None:
            scored = [TokenLogprob(prompt[0], e.piece(prompt[0]), None)]
        step = e.config.n_batch
        for start in range(0, len(prompt), step):
            if cancelled.is_set():
                raise _Cancelled
            chunk = prompt[start : start + step]
            last = start + len(chunk) == len(prompt)
            flags = [want_logprobs is not None] * len(chunk)
            flags[-1] = flags[-1] or last
            e.decode(chunk, list(range(start, start + len(chunk))), [_SEQ] * len(chunk), flags)
            self._kv_used = start + len(chunk)
            if scored is not None and want_logprobs is not None:
                # Row j predicts prompt token start+j+1: the position fix over llama_cpp.Llama.
                for j in range(len(chunk)):
                    target = start + j + 1
                    if target < len(prompt):
                        scored.append(self._logprob_entry(e.logits(j), prompt[target], want_logprobs))
        return scored, (len(prompt) - 1) % step

    def _decode_loop(
        self, job: _Job, chain: SamplerChain, prompt_logprobs: list[TokenLogprob] | None, index: int
    ) -> None:
        e = self.engine
        params = job.req.params
        stream = TextStream(stop=list(params.stop))
        eog = set(e.eog_ids)
        position = len(job.req.prompt_tokens)
        for produced in range(params.max_tokens):
            if job.cancelled.is_set():
                return
            logits = e.logits(index)
            entry_logits = logits.copy() if params.logprobs is not None else None
            if params.ignore_eos or produced < params.min_tokens:
                logits[e.eog_ids] = -np.inf
            token = chain.sample(e.ctx, index)
            self._generated += 1
            finish: FinishReason | None = None
            if token in eog:
                finish, text = "stop", stream.flush()
            else:
                text = stream.push(e.piece(token))
                if stream.stopped:
                    finish = "stop"
                elif produced + 1 == params.max_tokens or position + 1 >= e.n_ctx:
                    finish, text = "length", text + stream.flush()
            logprobs = None
            if entry_logits is not None and params.logprobs is not None:
                logprobs = [self._logprob_entry(entry_logits, token, params.logprobs)]
            job.send(
                Chunk(
                    [token],
                    text,
                    logprobs=logprobs,
                    finish_reason=finish,
                    prompt_logprobs=prompt_logprobs if produced == 0 else None,
                )
            )
            if finish is not None:
                return
            e.decode([token], [position], [_SEQ], [True])
            position += 1
            self._kv_used = position
            index = 0

    def _logprob_entry(self, logits: np.ndarray, token: int, k: int) -> TokenLogprob:
        lp = log_softmax(logits)
        piece = self.engine.piece
        top = tuple(TopLogprob(i, piece(i), v) for i, v in top_k(lp, k))
        return TokenLogprob(token, piece(token), float(lp[token]), top)


class _Cancelled(Exception):
    """The consumer left while the prompt was being evaluated."""
