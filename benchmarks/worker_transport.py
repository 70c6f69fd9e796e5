"""The engine worker's transport, chosen by measurement: one engine step's message
(every running sequence's new token, text and, when asked, logprobs; as
backends/worker/child.py sends it) carried between two processes by

- a multiprocessing pipe with pickle (what the worker uses),
- the same pipe with msgpack (the step flattened to lists, rebuilt on arrival),
- a ZeroMQ PAIR socket over ipc:// with pickle, and with msgpack.

Per transport and step size: the one-way latency (half a ping-pong round trip,
encoding and decoding on both sides included; median and p99 of 2,000) and what
decoding one step costs the gateway's event loop (in this process). One decode
step of SmolLM2 at concurrency 1 takes ~15 ms here, at concurrency 16 ~40 ms: the
table says what fraction of that the transport is.

    .venv/bin/python -m benchmarks.worker_transport
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import pickle
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack
import zmq
from rich.progress import Progress

from backends.base import Chunk, TokenLogprob, TopLogprob
from benchmarks.common import percentile, print_table, save_json

TRANSPORTS = ["pipe+pickle", "pipe+msgpack", "zmq+pickle", "zmq+msgpack"]
SEQUENCES = [1, 8, 16, 64]
ROUNDS = 2000

Step = tuple[str, list[tuple[int, Chunk]], None]


def step(sequences: int, logprobs: bool) -> Step:
    """One step as the worker sends it: a new token per running sequence."""

    def chunk(i: int) -> Chunk:
        top = tuple(TopLogprob(100 + k, f" tok{k}".encode(), -0.5 * k) for k in range(5))
        lp = [TokenLogprob(4000 + i, b" word", -0.25, top)] if logprobs else None
        return Chunk([4000 + i], " word", lp)

    return ("step", [(rid, chunk(rid)) for rid in range(sequences)], None)


def _flat(msg: Step) -> bytes:
    def lp(x: TokenLogprob) -> list[Any]:
        return [x.token_id, x.token, x.logprob, [[t.token_id, t.token, t.logprob] for t in x.top]]

    items = [
        [rid, c.token_ids, c.text, c.finish_reason, None if c.logprobs is None else [lp(x) for x in c.logprobs]]
        for rid, c in msg[1]
    ]
    data: bytes = msgpack.packb([msg[0], items, msg[2]])
    return data


def _unflat(data: bytes) -> Step:
    kind, items, stats = msgpack.unpackb(data)

    def lp(x: list[Any]) -> TokenLogprob:
        return TokenLogprob(x[0], x[1], x[2], tuple(TopLogprob(*t) for t in x[3]))

    chunks = [
        (rid, Chunk(ids, text, None if lps is None else [lp(x) for x in lps], fin))
        for rid, ids, text, fin, lps in items
    ]
    return (kind, chunks, stats)


def _encode(codec: str, msg: Step) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL) if codec == "pickle" else _flat(msg)


def _decode(codec: str, data: bytes) -> Step:
    msg: Step = pickle.loads(data) if codec == "pickle" else _unflat(data)
    return msg


def _echo(transport: str, endpoint: Connection | str) -> None:
    """The worker's side: receive a step, decode it, encode it again, send it back."""
    kind, codec = transport.split("+")
    if kind == "pipe":
        assert isinstance(endpoint, Connection)
        while (data := endpoint.recv_bytes()) != b"stop":
            endpoint.send_bytes(_encode(codec, _decode(codec, data)))
        return
    sock = zmq.Context().socket(zmq.PAIR)
    sock.connect(str(endpoint))
    while (data := sock.recv()) != b"stop":
        sock.send(_encode(codec, _decode(codec, data)))
    sock.close(0)


def one_way_us(transport: str, msg: Step, rounds: int) -> list[float]:
    kind, codec = transport.split("+")
    ctx = mp.get_context("spawn")  # as the worker is started
    if kind == "pipe":
        ours, theirs = ctx.Pipe()
        child = ctx.Process(target=_echo, args=(transport, theirs), daemon=True)
        child.start()
        send, recv = ours.send_bytes, ours.recv_bytes
    else:
        address = f"ipc:///tmp/lightgate-transport-{time.monotonic_ns()}"
        sock = zmq.Context().socket(zmq.PAIR)
        sock.bind(address)
        child = ctx.Process(target=_echo, args=(transport, address), daemon=True)
        child.start()
        send, recv = sock.send, sock.recv  # type: ignore[assignment]
    times = []
    for i in range(rounds + 100):
        began = time.perf_counter()
        send(_encode(codec, msg))
        _decode(codec, recv())
        if i >= 100:  # warm-up
            times.append((time.perf_counter() - began) / 2 * 1e6)
    send(b"stop")
    child.join(5)
    return times


def decode_us(transport: str, msg: Step, rounds: int = 2000) -> float:
    """The gateway's side alone: decoding one step, on its event loop's thread."""
    codec = transport.split("+")[1]
    data = _encode(codec, msg)
    began = time.perf_counter()
    for _ in range(rounds):
        _decode(codec, data)
    return (time.perf_counter() - began) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", default="bench-results/worker_transport.json")
    args = parser.parse_args()
    cases = [(t, n, lp) for lp in (False, True) for n in SEQUENCES for t in TRANSPORTS]
    results: list[dict[str, Any]] = []
    with Progress() as progress:
        task = progress.add_task("transports", total=len(cases))
        for transport, sequences, logprobs in cases:
            msg = step(sequences, logprobs)
            times = one_way_us(transport, msg, args.rounds)
            results.append(
                {
                    "transport": transport,
                    "sequences": sequences,
                    "logprobs": logprobs,
                    "bytes": len(_encode(transport.split("+")[1], msg)),
                    "one_way_p50_us": percentile(times, 50),
                    "one_way_p99_us": percentile(times, 99),
                    "gateway_decode_us": decode_us(transport, msg),
                }
            )
            progress.advance(task)
    print_table(
        ["transport", "sequences", "logprobs", "bytes", "one-way p50 (us)", "p99 (us)", "gateway decode (us)"],
        [
            [
                r["transport"],
                str(r["sequences"]),
                "top 5" if r["logprobs"] else "no",
                str(r["bytes"]),
                f"{r['one_way_p50_us']:.0f}",
                f"{r['one_way_p99_us']:.0f}",
                f"{r['gateway_decode_us']:.1f}",
            ]
            for r in results
        ],
    )
    save_json(args.out, results)
    plot(results, Path("docs/figures/worker-transport.png"))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    from loadtest.plots import png, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, logprobs in zip(axes, (False, True), strict=True):
        for transport in TRANSPORTS:
            rows = [r for r in results if r["transport"] == transport and r["logprobs"] is logprobs]
            ax.plot([r["sequences"] for r in rows], [r["one_way_p50_us"] for r in rows], marker="o", label=transport)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequences in the step")
        ax.set_title("with top-5 logprobs" if logprobs else "tokens and text")
    axes[0].set_ylabel("one-way latency of a step, p50 (us)")
    axes[0].legend()
    fig.suptitle("Engine worker transport: one step message between two processes (2 cores)")
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
