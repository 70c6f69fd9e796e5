"""Engine workers under a crash: two real models, each in its worker process
(`worker: true`), streams running on both, and one worker killed (SIGKILL, then the
other with SIGSEGV). Reported per kill: the other model's streams completed, the
killed model's streams that got a clear error, and the time from the kill until the
killed model answers again, beside its load time (a fresh worker started and
loaded, measured first, median of three): the goal is at most load time + 1 s.

The gateway runs in this process (uvicorn in a thread) so the workers' pids are at
hand; the streams are the official openai client's, in threads.

    .venv/bin/python -m benchmarks.worker_crash
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import uvicorn
from rich.console import Console

from backends.worker.backend import WorkerBackend
from benchmarks.common import print_table, save_json
from compressed_models.catalog import resolve
from gateway.app import create_app
from gateway.config import ModelConfig, Settings
from gateway.connections import uvicorn_config
from gateway.router import Router, State

MODELS = {"smollm2": "smollm2-135m-instruct-q4_1", "qwen0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m"}
OPTIONS: dict[str, object] = {"n_ctx": 512, "n_parallel": 4, "n_threads": 1}
console = Console(stderr=True)


def load_time(variant: str) -> float:
    """Seconds for a fresh worker to start and load the model, as after a crash."""

    async def once() -> float:
        backend = WorkerBackend("llamacpp", str(resolve(variant)), dict(OPTIONS))
        began = time.perf_counter()
        await backend.start()
        took = time.perf_counter() - began
        await backend.stop()
        return took

    return statistics.median(asyncio.run(once()) for _ in range(3))


@contextmanager
def gateway() -> Iterator[tuple[str, Router]]:
    models = [ModelConfig(name=n, variant=v, worker=True, options=dict(OPTIONS)) for n, v in MODELS.items()]
    settings = Settings(models=models, access_log=False)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    router: Router = app.state.router
    while not (server.started and router.ready):
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", router
    finally:
        server.should_exit = True
        thread.join(60)


def stream(client: openai.OpenAI, model: str, out: list[str]) -> None:
    try:
        finish = None
        for chunk in client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=200, stream=True, extra_body={"ignore_eos": True}
        ):
            finish = chunk.choices[0].finish_reason or finish
        out.append(f"completed ({finish})")
    except openai.APIError as exc:
        out.append(f"error: {exc.message}")


def crash(base: str, router: Router, victim: str, other: str, sig: signal.Signals, streams: int) -> dict[str, Any]:
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    backend = router.get(victim).backend
    assert isinstance(backend, WorkerBackend)
    ours: list[str] = []
    theirs: list[str] = []
    threads = [threading.Thread(target=stream, args=(client, victim, ours)) for _ in range(streams)]
    threads += [threading.Thread(target=stream, args=(client, other, theirs)) for _ in range(streams)]
    for t in threads:
        t.start()
    while backend.stats().running < streams:
        time.sleep(0.01)
    time.sleep(0.5)  # well inside the streams
    pid = backend.pid
    assert pid is not None
    killed = time.perf_counter()
    os.kill(pid, sig)
    deployment = router.get(victim)
    while deployment.state is not State.READY or backend.pid in (None, pid):
        time.sleep(0.005)
    ready = time.perf_counter() - killed
    client.completions.create(model=victim, prompt="Hello", max_tokens=1)
    answered = time.perf_counter() - killed
    for t in threads:
        t.join(120)
    clear = [r for r in ours if r.startswith("error:") and sig.name in r and "restarting" in r]
    return {
        "victim": victim,
        "signal": sig.name,
        "other_completed": sum(r.startswith("completed") for r in theirs),
        "other_streams": len(theirs),
        "victim_clear_errors": len(clear),
        "victim_streams": len(ours),
        "example_error": clear[0] if clear else (ours[0] if ours else ""),
        "kill_to_ready_s": ready,
        "kill_to_answer_s": answered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams on each model")
    parser.add_argument("--out", default="bench-results/worker_crash.json")
    args = parser.parse_args()
    console.print("measuring each model's load time in a fresh worker")
    loads = {name: load_time(variant) for name, variant in MODELS.items()}
    rows = []
    with gateway() as (base, router):
        plan = [("smollm2", "qwen0.5b", signal.SIGKILL), ("qwen0.5b", "smollm2", signal.SIGSEGV)]
        for victim, other, sig in plan:
            console.print(f"{sig.name} to {victim}'s worker under {args.streams} + {args.streams} streams")
            row = crash(base, router, victim, other, sig, args.streams)
            row["load_s"] = loads[victim]
            rows.append(row)
    save_json(args.out, rows)
    print_table(
        ["killed", "signal", "other model's streams completed", "killed model's streams with a clear error",
         "kill to ready s", "kill to first answer s", "load time s", "goal: answer ≤ load + 1 s"],
        [
            [r["victim"], r["signal"], f"{r['other_completed']} of {r['other_streams']}",
             f"{r['victim_clear_errors']} of {r['victim_streams']}", f"{r['kill_to_ready_s']:.2f}",
             f"{r['kill_to_answer_s']:.2f}", f"{r['load_s']:.2f}",
             "met" if r["kill_to_answer_s"] <= r["load_s"] + 1 else "not met"]
            for r in rows
        ],
    )  # fmt: skip
    print(f"\nfirst error seen: {rows[0]['example_error']}")


if __name__ == "__main__":
    main()
