"""The worker process: builds the engine class it is named, starts it, and serves
the gateway over two pipes.

- `stream`: the gateway sends ("gen", rid, GenerationRequest), ("cancel", rid) and
  ("stop",); the worker answers ("ready", info) or ("fail", message) once, then
  ("step", [(rid, Chunk | exception), ...], BackendStats | None) for each batch of chunks
  the engine hands over together (one engine step), so a step costs one message
  whatever the number of sequences; and ("stats", BackendStats) between steps. After
  "ready" these are byte strings of wire.py (a step in msgpack).
- `rpc`: the tokenizer half of the interface (tokenize, detokenize, token_bytes),
  served by a thread of its own so that it never waits behind a step.

A closed pipe (the gateway is gone) stops the engine and ends the process."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from contextlib import aclosing
from multiprocessing.connection import Connection
from typing import Any

from backends import create_backend
from backends.base import Backend, BackendError, Chunk, GenerationRequest, UnsupportedFeature
from backends.worker import wire

RPC_CALLS = frozenset({"tokenize", "detokenize", "token_bytes"})
STATS_EVERY_S = 0.25
STATS_IN_STEPS_S = 0.05  # a step carries the stats at most this often: they cost a syscall and a pickle


def main(stream: Connection, rpc: Connection, backend: str, path: str | None, options: dict[str, object]) -> None:
    """The worker's entry point (multiprocessing's spawn target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the gateway's to handle: it stops us
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(levelname)s %(message)s")
    asyncio.run(_serve(stream, rpc, backend, path, options))


def _portable(exc: BaseException) -> BaseException:
    """An exception the gateway can unpickle and map: a refusal stays one, anything
    else becomes an engine error naming what it was."""
    if isinstance(exc, UnsupportedFeature | BackendError):
        return exc
    return BackendError(f"{type(exc).__name__}: {exc}")


async def _serve(stream: Connection, rpc: Connection, name: str, path: str | None, options: dict[str, Any]) -> None:
    try:
        engine: Backend = create_backend(name, path, options)  # type: ignore[assignment]
        await engine.start()
    except Exception as exc:  # the gateway reports it as the model's failure to start
        stream.send(("fail", f"{type(exc).__name__}: {exc}"))
        return
    info = {
        "vocab_size": engine.vocab_size,
        "max_model_len": engine.max_model_len,
        "chat_template": engine.chat_template,
        "stats": engine.stats(),
    }
    stream.send(("ready", info))
    threading.Thread(target=_answer_calls, args=(rpc, engine), name="worker-rpc", daemon=True).start()
    await _Steps(stream, engine).run()
    await engine.stop()


class _Steps:
    """Runs each request as a task and sends what the engine hands over, batched."""

    def __init__(self, stream: Connection, engine: Backend) -> None:
        self.stream, self.engine = stream, engine
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.pending: list[tuple[int, Chunk | BaseException]] = []
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
        self.stats_sent = 0.0

    async def run(self) -> None:
        threading.Thread(target=self._receive, name="worker-inbox", daemon=True).start()
        heartbeat = asyncio.create_task(self._heartbeat())
        while (msg := await self.inbox.get()) is not None:
            if msg[0] == "gen":
                rid, req = msg[1], msg[2]
                self.tasks[rid] = asyncio.create_task(self._generate(rid, req))
            elif msg[0] == "cancel":
                task = self.tasks.pop(msg[1], None)
                if task is not None:
                    task.cancel()  # closes the engine's stream: the sequence leaves at its next step
            elif msg[0] == "stop":
                break
        heartbeat.cancel()
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def _heartbeat(self) -> None:
        """Stats between steps too: a cancelled sequence, an engine gone idle, show up
        in the gateway's view (and its /metrics) within a quarter of a second."""
        last = None
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            stats = self.engine.stats()
            if stats != last and not self.pending:
                last = stats
                self._send(wire.encode_other(("stats", stats)))

    def _receive(self) -> None:
        """Blocks on the pipe in a thread; a closed pipe means the gateway is gone."""
        while True:
            try:
                msg = self.stream.recv()
            except (EOFError, OSError):
                msg = None
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, msg)
            if msg is None:
                return

    async def _generate(self, rid: int, req: GenerationRequest) -> None:
        try:
            async with aclosing(self.engine.generate(req)) as chunks:
                async for chunk in chunks:
                    self._emit(rid, chunk)
        except asyncio.CancelledError:
            pass  # the gateway cancelled it: it expects nothing more
        except Exception as exc:
            self._emit(rid, _portable(exc))
        finally:
            self.tasks.pop(rid, None)

    def _emit(self, rid: int, item: Chunk | BaseException) -> None:
        # The engine hands a step's chunks to this loop in one callback, which wakes
        # every request's task; a flush queued behind them sends the step as one message.
        if not self.pending:
            self.loop.call_soon(self._flush)
        self.pending.append((rid, item))

    def _flush(self) -> None:
        items, self.pending = self.pending, []
        now, stats = time.monotonic(), None
        if now - self.stats_sent >= STATS_IN_STEPS_S:
            stats, self.stats_sent = self.engine.stats(), now
        self._send(wire.encode_step(items, stats))

    def _send(self, data: bytes) -> None:
        try:
            self.stream.send_bytes(data)
        except (BrokenPipeError, OSError):
            self.inbox.put_nowait(None)  # the gateway is gone


def _answer_calls(rpc: Connection, engine: Backend) -> None:
    while True:
        try:
            op, args, kwargs = rpc.recv()
        except (EOFError, OSError):
            return
        try:
            if op not in RPC_CALLS:
                raise BackendError(f"the worker does not answer {op!r}")
            reply: tuple[str, Any] = ("ok", getattr(engine, op)(*args, **kwargs))
        except Exception as exc:
            reply = ("err", _portable(exc))
        try:
            rpc.send(reply)
        except (BrokenPipeError, OSError):
            return
