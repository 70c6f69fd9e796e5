"""What crosses the worker's stream pipe after "ready", one tagged byte string each.

A step (every running sequence's chunks) is msgpack of plain lists: measured against
pickle of the same dataclasses (benchmarks/worker_transport.py, docs/benchmarks.md),
it is 2-4x faster to decode on the gateway's side and 1-4x on the way, most with
logprobs and many sequences. Everything else (stats between steps, an exception
inside a step, requests going the other way) is rare and stays pickle, which keeps
its classes."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack

from backends.base import BackendStats, Chunk, TokenLogprob, TopLogprob

STEP, OTHER = b"S", b"P"

Item = tuple[int, Chunk | BaseException]


def _logprobs(lps: list[TokenLogprob] | None) -> list[Any] | None:
    if lps is None:
        return None
    return [[x.token_id, x.token, x.logprob, [[t.token_id, t.token, t.logprob] for t in x.top]] for x in lps]


def _from_logprobs(lps: list[Any] | None) -> list[TokenLogprob] | None:
    if lps is None:
        return None
    return [TokenLogprob(i, tok, lp, tuple(TopLogprob(*t) for t in top)) for i, tok, lp, top in lps]


def encode_step(items: list[Item], stats: BackendStats | None) -> bytes:
    rows: list[Any] = []
    for rid, item in items:
        if isinstance(item, BaseException):  # a request's failure: rare, and pickle keeps its class
            rows.append([rid, pickle.dumps(item)])
        else:
            logprobs, prompt = _logprobs(item.logprobs), _logprobs(item.prompt_logprobs)
            rows.append([rid, item.token_ids, item.text, item.finish_reason, logprobs, prompt])
    packed: bytes = msgpack.packb([rows, None if stats is None else pickle.dumps(stats)])
    return STEP + packed


def encode_other(msg: tuple[Any, ...]) -> bytes:
    return OTHER + pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> tuple[Any, ...]:
    """("step", [(rid, Chunk | exception), ...], stats | None), or what encode_other sent."""
    if data[:1] == OTHER:
        msg: tuple[Any, ...] = pickle.loads(data[1:])
        return msg
    rows, stats = msgpack.unpackb(data[1:])
    items: list[Item] = []
    for row in rows:
        if len(row) == 2:
            items.append((row[0], pickle.loads(row[1])))
        else:
            rid, ids, text, finish, logprobs, prompt = row
            items.append((rid, Chunk(ids, text, _from_logprobs(logprobs), finish, _from_logprobs(prompt))))
    return ("step", items, None if stats is None else pickle.loads(stats))
