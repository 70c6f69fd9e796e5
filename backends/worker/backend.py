"""The gateway's side of an engine worker: a `Backend` that runs another backend
class in a process of its own (backends/worker/child.py), watches it, and starts it
again when it dies.

A request's chunks come back in the worker's one-message-per-step batches, read by
the event loop itself when the pipe turns readable (no reader thread to wake and
hand over from: one wake-up per step). When
the worker dies, every request it was running ends with `EngineRestarting` (a 503
before the first byte, an error event inside a stream), new requests wait for the
new worker up to `restart_wait_s`, and the worker is started again: at once the
first time, then after a backoff that doubles while it keeps dying or failing to start."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from backends import backend_class
from backends.base import (
    BackendError,
    BackendStats,
    ChatTemplateInfo,
    Chunk,
    EngineRestarting,
    GenerationRequest,
    Kind,
    UnsupportedFeature,
)
from backends.worker import child, wire

log = logging.getLogger("lightgate")

START_TIMEOUT_S = 600.0  # loading a large model from a cold disk
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
STABLE_S = 60.0  # a worker that lived this long resets the backoff


def exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclass(slots=True, frozen=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Chunk | BaseException]

    def put(self, item: Chunk | BaseException) -> None:
        """From the gateway's loop: at once on it, else handed to the stream's own loop."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.out.put_nowait(item)
        else:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody listens
                self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class _Process:
    """One running worker: its process and its two pipes (the step pipe's descriptor
    watched by the event loop)."""

    def __init__(self, proc: BaseProcess, stream: Connection, rpc: Connection) -> None:
        self.proc, self.stream, self.rpc = proc, stream, rpc
        self.fd = stream.fileno()
        self.started = time.monotonic()
        self.rpc_lock = threading.Lock()
        self.reaper: asyncio.Task[None] | None = None  # held here: the loop keeps only a weak reference


class WorkerBackend:
    kind = Kind.ENGINE

    def __init__(
        self,
        backend: str,
        path: str | None,
        options: dict[str, object],
        *,
        label: str = "",
        restart_wait_s: float = 30.0,
        unfetched: bool = False,
    ) -> None:
        self.name = backend
        self.label = label or backend
        self.restart_wait_s = restart_wait_s
        self.restarts = 0  # times the worker died and was started again
        # Told (up, reason) when the worker dies and when it is back: the router moves
        # the model to restarting and back to ready.
        self.on_state: Callable[[bool, str | None], None] | None = None
        self._spec = (backend, path, options)
        self.unfetched = unfetched  # its weights are not on disk yet: fetched() gives their path
        self._ids = itertools.count()
        # Each request's chunks, with the event loop that awaits them (the gateway's, or
        # a caller's own: a queue is fed only from its loop's thread).
        self._streams: dict[int, _Stream] = {}
        self._info: dict[str, Any] = {}
        self._stats = BackendStats()
        self._pieces: dict[int, bytes] = {}
        self._tokenizer: Any = None  # the class's `tokenizer_class`, when it has one; else the worker answers
        self._estimate: int | None = None  # memory_estimate's answer, once asked
        self._gpu_estimate: dict[int, int] | None = None  # gpu_memory_estimate's, once asked
        self._footprint_key: str | None = None  # footprint_key's, once asked (the budget asks each second)
        self._worker: _Process | None = None
        self._up: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._stopping = False
        self._backoff = 0.0  # the first restart is immediate; a crash loop slows down

    # -- lifecycle ------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """The weights the worker loads; None until a `fetch: on_demand` model is fetched."""
        return self._spec[1]

    def fetched(self, path: str) -> None:
        """The weights are on disk now: the next start loads them."""
        self._spec = (self._spec[0], path, self._spec[2])
        self.unfetched = False
        self._estimate, self._gpu_estimate, self._footprint_key = None, None, None

    def estimate_bytes(self) -> int | None:
        """What the worker will hold, from its weights and options, by the class's own
        `memory_estimate` (weights as the engine holds them, KV cells, buffers, the
        libraries); None when the class has none or the weights are not here yet."""
        estimate = getattr(backend_class(self.name), "memory_estimate", None)
        _, path, options = self._spec
        if estimate is None or path is None or self.unfetched:
            return None
        if self._estimate is None:
            self._estimate = int(estimate(path, options))
        return self._estimate

    def gpu_estimate_bytes(self) -> dict[int, int]:
        """What the worker will hold on each GPU, by the class's `gpu_memory_estimate`;
        empty for an engine on the CPU, or one that cannot say."""
        estimate = getattr(backend_class(self.name), "gpu_memory_estimate", None)
        _, path, options = self._spec
        if estimate is None or path is None or self.unfetched:
            return {}
        if self._gpu_estimate is None:
            self._gpu_estimate = {int(k): int(v) for k, v in estimate(path, options).items()}
        return self._gpu_estimate

    def footprint_key(self) -> str | None:
        """What the worker's memory depends on, as a digest: the engine, its options, and
        its weights (path, size, time written). A footprint measured under one key stays
        true for the next process with the same key; None until the weights are here."""
        name, path, options = self._spec
        if self.unfetched:
            return None
        if self._footprint_key is None:
            weights = Path(path) if path is not None else None
            files = [] if weights is None else sorted(weights.rglob("*")) if weights.is_dir() else [weights]
            stamps = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
            text = json.dumps([name, stamps, options], sort_keys=True, default=str)
            self._footprint_key = hashlib.sha256(text.encode()).hexdigest()[:32]
        return self._footprint_key

    async def prepare(self) -> None:
        """What the gateway keeps while no worker runs: the tokenizer, when the class has
        one (`tokenizer_class`): no round trip per request, and it goes on during a restart."""
        make = getattr(backend_class(self.name), "tokenizer_class", None)
        if make is not None and self._tokenizer is None and not self.unfetched:
            _, path, options = self._spec
            self._tokenizer = await asyncio.to_thread(make, path, **options)

    async def start(self) -> None:
        """Start the worker (again, after a stop: the memory budget loads and unloads)."""
        self._loop = asyncio.get_running_loop()
        self._up = asyncio.Event()
        self._stopping, self._restarting, self._backoff = False, None, 0.0
        await self.prepare()
        await self._spawn()

    async def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        stream, child_stream = ctx.Pipe()
        rpc, child_rpc = ctx.Pipe()
        proc = ctx.Process(
            target=child.main, args=(child_stream, child_rpc, *self._spec), name=f"lightgate-{self.label}", daemon=True
        )
        proc.start()
        child_stream.close()
        child_rpc.close()
        try:
            kind, payload = await asyncio.to_thread(_first_message, stream, proc)
        except BaseException:
            proc.kill()
            raise
        if kind != "ready":
            await asyncio.to_thread(proc.join, 5.0)
            raise BackendError(f"the {self.name} engine worker could not start: {payload}")
        self._info, self._stats = payload, payload["stats"]
        worker = self._worker = _Process(proc, stream, rpc)
        self._watch().add_reader(worker.fd, self._on_readable, worker)
        assert self._up is not None
        self._up.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._up is not None:
            self._up.clear()
        if self._restarting is not None:
            self._restarting.cancel()
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with contextlib.suppress(OSError):
            worker.stream.send(("stop",))
        await asyncio.to_thread(worker.proc.join, 30.0)
        if worker.proc.is_alive():
            worker.proc.kill()
        self._watch().remove_reader(worker.fd)
        worker.stream.close()
        worker.rpc.close()

    @property
    def pid(self) -> int | None:
        """The worker's process id (None while there is none)."""
        return self._worker.proc.pid if self._worker is not None else None

    # -- the step pipe and the supervisor -----------------------------------------------

    def _on_readable(self, worker: _Process) -> None:
        # The worker writes each message whole (one send_bytes), so a readable pipe
        # holds at least the start of one; what is there is read now, in one callback.
        try:
            while worker.stream.poll():
                self._on_step(worker, wire.decode(worker.stream.recv_bytes()))
        except (EOFError, OSError):  # the process is gone or going: no more callbacks
            self._watch().remove_reader(worker.fd)
            worker.reaper = self._watch().create_task(self._reap(worker))

    def _watch(self) -> asyncio.AbstractEventLoop:
        """The loop that started the worker: it watches the step pipe."""
        assert self._loop is not None
        return self._loop

    async def _reap(self, worker: _Process) -> None:
        await asyncio.to_thread(worker.proc.join, 5.0)  # the pipe closes as the process ends: its exit code follows
        self._on_exit(worker)

    def _on_step(self, worker: _Process, msg: tuple[Any, ...]) -> None:
        if worker is not self._worker:
            return
        if msg[0] == "stats":
            self._stats = msg[1]
            return
        _, items, stats = msg
        if stats is not None:
            self._stats = stats
        for rid, item in items:
            stream = self._streams.get(rid)
            if stream is not None:
                stream.put(item)

    def _on_exit(self, worker: _Process) -> None:
        if self._stopping or worker is not self._worker:
            return
        reason = f"the {self.name} engine worker died ({exit_reason(worker.proc.exitcode)})"
        log.error("model %s: %s; restarting it", self.label, reason)
        self._worker = None
        assert self._up is not None
        self._up.clear()
        self.restarts += 1
        failure = EngineRestarting(f"{reason}; the model is restarting, retry shortly")
        for stream in self._streams.values():
            stream.put(failure)
        self._streams.clear()
        with worker.rpc_lock:
            worker.rpc.close()
        worker.stream.close()
        if time.monotonic() - worker.started > STABLE_S:
            self._backoff = 0.0
        if self.on_state is not None:
            self.on_state(False, reason)
        self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._backoff)
            self._backoff = min(max(self._backoff * 2, BACKOFF_FIRST_S), BACKOFF_MAX_S)
            try:
                await self._spawn()
            except Exception as exc:
                log.error("model %s: the engine worker did not start again: %s", self.label, exc)
                continue
            log.info("model %s: engine worker restarted (pid %s)", self.label, self.pid)
            if self.on_state is not None:
                self.on_state(True, None)
            return

    # -- the interface the gateway uses ---------------------------------------------

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if req.params.logits_processors:  # code, not data: it cannot run on the other side of a pipe
            raise UnsupportedFeature(
                f"the {self.label} model's engine runs in a worker process: it takes no per-request logits "
                "processors (structured outputs, which cross as data, work)",
                "logits_processors",
            )
        worker = await self._ready_worker()
        rid = next(self._ids)
        out: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        self._streams[rid] = _Stream(asyncio.get_running_loop(), out)
        finished = False
        try:
            worker.stream.send(("gen", rid, req))
        except OSError as exc:  # it died a moment ago; the step pipe will say so
            self._streams.pop(rid, None)
            raise EngineRestarting(f"the {self.name} engine worker is gone; retry shortly") from exc
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if self._streams.pop(rid, None) is not None and not finished and worker is self._worker:
                with contextlib.suppress(OSError):
                    worker.stream.send(("cancel", rid))  # the client left: free its slot now

    async def _ready_worker(self) -> _Process:
        assert self._up is not None
        if not self._up.is_set():
            try:
                await asyncio.wait_for(self._up.wait(), self.restart_wait_s)
            except TimeoutError:
                raise EngineRestarting(
                    f"the {self.name} engine worker did not come back within {self.restart_wait_s:g}s"
                ) from None
        worker = self._worker
        if worker is None:
            raise EngineRestarting(f"the {self.name} engine worker is restarting; retry shortly")
        return worker

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        worker = self._worker
        if worker is None:
            raise EngineRestarting(f"the {self.name} engine worker is restarting; retry shortly")
        with worker.rpc_lock:
            try:
                worker.rpc.send((op, args, kwargs))
                status, value = worker.rpc.recv()
            except (EOFError, OSError) as exc:
                raise EngineRestarting(f"the {self.name} engine worker is gone; retry shortly") from exc
        if status == "err":
            raise value
        return value

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        if self._tokenizer is not None:
            tokens: list[int] = self._tokenizer.tokenize(text, special=special, bos=bos)
            return tokens
        return list(self._call("tokenize", text, special=special, bos=bos))

    def detokenize(self, token_ids: list[int]) -> str:
        if self._tokenizer is not None:
            return str(self._tokenizer.detokenize(token_ids))
        return str(self._call("detokenize", token_ids))

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)  # a vocabulary does not change: ask once per token
        if piece is None:
            source = self._tokenizer.token_bytes if self._tokenizer is not None else self._worker_bytes
            piece = self._pieces[token_id] = source(token_id)
        return piece

    def _worker_bytes(self, token_id: int) -> bytes:
        return bytes(self._call("token_bytes", token_id))

    @property
    def vocab_size(self) -> int:
        return int(self._info.get("vocab_size", 0))

    @property
    def max_model_len(self) -> int:
        return int(self._info.get("max_model_len", 0))

    @property
    def chat_template(self) -> ChatTemplateInfo | None:
        template: ChatTemplateInfo | None = self._info.get("chat_template")
        return template

    def stats(self) -> BackendStats:
        if self._worker is None:  # restarting: nothing runs, the capacity stays
            return BackendStats(max_running=self._stats.max_running, weight_bytes=self._stats.weight_bytes)
        return self._stats


def _first_message(stream: Connection, proc: BaseProcess) -> tuple[str, Any]:
    """The worker's first word: ready (with what the gateway needs to know) or why not."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not stream.poll(0.2):
        if not proc.is_alive():
            return "fail", f"the process ended ({exit_reason(proc.exitcode)}) before it was ready"
        if time.monotonic() > deadline:
            return "fail", f"not ready after {START_TIMEOUT_S:g}s"
    try:
        msg: tuple[str, Any] = stream.recv()
    except (EOFError, OSError):
        proc.join(5.0)
        return "fail", f"the process ended ({exit_reason(proc.exitcode)}) before it was ready"
    return msg
