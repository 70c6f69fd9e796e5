"""Embedding models: the interface an embedding engine implements (`Embedder`) and the
batcher that packs the inputs of concurrent requests into shared forward passes.

An embedding is one forward pass per input and no decoding, so what makes it fast is
the batch: inputs from every request waiting are packed together, up to the
engine's token and input limits, and each request gets its rows back when the last
of its inputs is done. A request may be larger than one batch; it is split."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from backends.base import BackendError, BackendStats, Kind

Vectors = npt.NDArray[np.float32]  # one row per input


@runtime_checkable
class Embedder(Protocol):
    """A token engine that pools a sequence's hidden states into one vector (a model
    whose task is `embed`). Like `Backend`, it gets a path and knows nothing of HTTP."""

    name: str
    kind: Kind  # Kind.ENGINE

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def embed(self, inputs: list[list[int]]) -> Vectors:
        """One row per input (token ids with the model's special tokens), pooled as the
        model declares and normalized to length 1 when it says so."""
        ...

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]: ...

    def detokenize(self, token_ids: list[int]) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def embedding_dim(self) -> int: ...

    def stats(self) -> BackendStats: ...


def normalized(rows: Vectors) -> Vectors:
    """Each row divided by its L2 norm (sentence-transformers' Normalize, llama-server's default)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(slots=True, eq=False)
class _Job:
    inputs: list[list[int]]
    future: asyncio.Future[Vectors]
    rows: list[Vectors | None] = field(default_factory=list)
    left: int = 0


class EmbedBatcher:
    """One thread that runs `forward(batch) -> rows` over batches packed from every
    waiting request, in arrival order: at most `max_inputs` inputs and `max_tokens`
    tokens (as `cost` counts them) per batch."""

    def __init__(
        self,
        name: str,
        forward: Callable[[list[list[int]]], Vectors],
        max_inputs: int,
        max_tokens: int,
        cost: Callable[[list[list[int]]], int] = lambda batch: sum(map(len, batch)),
    ) -> None:
        self._forward, self._cost = forward, cost
        self.max_inputs, self.max_tokens = max_inputs, max_tokens
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending: deque[tuple[_Job, int]] = deque()  # (job, input index), in arrival order
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.running = 0  # inputs in the batch being computed
        self.embedded_inputs = 0  # since start
        self.batches = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    @property
    def waiting(self) -> int:
        return len(self._pending) + self._jobs.qsize()

    async def submit(self, inputs: list[list[int]]) -> Vectors:
        """The rows of `inputs`, computed alongside whatever else is waiting. Cancelling
        the await (a client gone) drops the inputs not yet computed."""
        for tokens in inputs:
            if not tokens or self._cost([tokens]) > self.max_tokens:
                raise ValueError(f"an input of {len(tokens)} tokens does not fit a batch of {self.max_tokens}")
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Job(inputs, future, [None] * len(inputs), len(inputs)))
        return await future

    def _loop(self) -> None:
        while True:
            if not self._pending:
                job = self._jobs.get()  # nothing to do: sleep until a request comes
                if job is None:
                    return
                self._take(job)
            while True:  # everything that arrived meanwhile joins the queue
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return
                self._take(job)
            self._step()

    def _take(self, job: _Job) -> None:
        self._pending.extend((job, i) for i in range(len(job.inputs)))

    def _step(self) -> None:
        batch: list[tuple[_Job, int]] = []
        tokens: list[list[int]] = []
        while self._pending and len(batch) < self.max_inputs:
            job, i = self._pending[0]
            if job.future.done():  # cancelled: its client has gone
                self._pending.popleft()
                continue
            if batch and self._cost([*tokens, job.inputs[i]]) > self.max_tokens:
                break
            batch.append(self._pending.popleft())
            tokens.append(job.inputs[i])
        if not batch:
            return
        self.running = len(batch)
        try:
            rows = self._forward(tokens)
        except Exception as exc:  # the engine failed: these requests get a 500, the thread lives on
            failed = {id(job): job for job, _ in batch}
            self._pending = deque((j, i) for j, i in self._pending if id(j) not in failed)
            for job in failed.values():
                _resolve(job.future, BackendError(f"{type(exc).__name__}: {exc}"))
            return
        finally:
            self.running = 0
        self.batches += 1
        self.embedded_inputs += len(batch)
        for (job, i), row in zip(batch, rows, strict=True):
            job.rows[i] = row
            job.left -= 1
            if job.left == 0:
                _resolve(job.future, np.stack([r for r in job.rows if r is not None]))


def _resolve(future: asyncio.Future[Vectors], result: Vectors | BaseException) -> None:
    def done() -> None:
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        future.get_loop().call_soon_threadsafe(done)
