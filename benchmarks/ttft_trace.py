"""Where a request's time to first token goes, on the shared-system-prompt workload of
`benchmarks/prefix_cache.py` (issue 23): the gateway runs with the llamacpp
scheduler's methods wrapped to record timestamps in memory (written out when it
exits), and each request's parts are read off them, the client's send and first
byte on the same monotonic clock (`time.perf_counter`, one clock for every process).
A request and its job are paired by the completion's id, which names the job
(`<id>-<choice>`), so requests sent close together are never paired crosswise.

Parts, per request after the first wave: reaching the scheduler (HTTP, chat template,
tokenizing), waiting for the step under way, placing it in a slot (with the save of
the slot's old sequence to the prompt store), its own prompt step, and the first token
to the client. And the store's saves (every one), by where they were written: a
buffer the store handed back, or fresh memory. The wrappers touch private methods: a trace, not a figure to compare
across code versions.

    .venv/bin/python -m benchmarks.ttft_trace
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import lightgate_config, print_table, save_json
from benchmarks.prefix_cache import MODEL, USERS, VARIANT, chat
from leanhttp.client import Client
from leanhttp.local import free_port, server_process
from loadtest.prompts import wikitext


def traced_serve(config: str, port: int, out: str) -> int:
    """The gateway, its scheduler's events recorded: (kind, start, end, job id, detail)."""
    from backends.llamacpp.engine import LlamaEngine
    from backends.llamacpp.prompt_store import PromptStore
    from backends.llamacpp.scheduler import Scheduler
    from gateway.cli import main

    events: list[tuple[str, float, float, str, int]] = []
    now = time.perf_counter

    def wrap(cls: type, name: str, record: Any) -> None:
        inner = getattr(cls, name)

        def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = now()
            result = inner(self, *args, **kwargs)
            record(self, start, args, result)
            return result

        setattr(cls, name, traced)

    wrap(Scheduler, "submit", lambda s, t, a, r: events.append(("submit", t, t, a[0].req.request_id, 0)))
    wrap(Scheduler, "_place", lambda s, t, a, r: events.append(("place", t, now(), a[0].req.request_id, 0)))
    wrap(LlamaEngine, "decode", lambda s, t, a, r: events.append(("decode", t, now(), "", len(a[0]))))
    # A save into a buffer handed back by the store (pages touched) or into fresh memory.
    wrap(PromptStore, "reserve", lambda s, t, a, r: events.append(("reserve", t, t, "", int(r is not None))))
    wrap(LlamaEngine, "save_sequence", lambda s, t, a, r: events.append(("save", t, now(), "", 0)))

    def first(s: Scheduler, t: float, a: Any, r: Any) -> None:
        if len(a[0].generated) == 1:
            events.append(("first", now(), now(), a[0].job.req.request_id, 0))

    wrap(Scheduler, "_sample", first)
    atexit.register(lambda: Path(out).write_text(json.dumps(events)))
    return main(["serve", "--config", config, "--port", str(port)])


async def workload(base: str, rounds: int) -> list[dict[str, float]]:
    """The shared-system-prompt workload, as benchmarks/prefix_cache.py sends it."""
    system = wikitext(700, seed=1, count=1).prompts[0].text
    questions = [p.text for p in wikitext(22, seed=3, count=64).prompts]
    client = Client(base, timeout_s=600)
    sent: list[dict[str, Any]] = []

    async def user(u: int) -> None:
        for r in range(rounds):
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": questions[(u * rounds + r) % len(questions)]},
            ]
            began = time.perf_counter()
            turn = await chat(client, messages)
            sent.append({"round": r, "send": began, "first": began + turn.ttft, "job": f"{turn.id}-0"})

    await asyncio.gather(*(user(u) for u in range(USERS)))
    client.close()
    return sent


def parts(events: list[list[Any]], sent: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Each request's parts, read off the events of its job (named by the completion's id)."""
    submits = {e[3]: e[1] for e in events if e[0] == "submit"}
    placed = {e[3]: (e[1], e[2]) for e in events if e[0] == "place"}
    firsts = {e[3]: e[1] for e in events if e[0] == "first"}
    decodes = sorted((e[1], e[2], e[4]) for e in events if e[0] == "decode")
    rows = []
    for request in sorted(sent, key=lambda r: r["send"]):
        job = request["job"]
        submitted = submits[job]
        place_start, place_end = placed[job]
        step_start, step_end, step_rows = max((d for d in decodes if d[1] <= firsts[job]), key=lambda d: d[1])
        rows.append(
            {
                "round": request["round"],
                "reaching the scheduler": submitted - request["send"],
                "waiting for the step under way": place_start - submitted,
                "placing it (the prompt store's save)": place_end - place_start,
                "steps before its own": step_start - place_end,
                "its own prompt step": step_end - step_start,
                "first token to the client": request["first"] - firsts[job],
                "TTFT": request["first"] - request["send"],
                "rows in its step": step_rows,
            }
        )
    return rows


def saves(events: list[list[Any]]) -> str:
    """The prompt store's saves, by where they were written: a buffer the store handed
    back (an entry's it displaced) or fresh memory."""
    kinds = [e[4] for e in events if e[0] == "reserve"]
    times = [(e[2] - e[1]) * 1000 for e in events if e[0] == "save"]
    parts = []
    for kind, label in ((1, "into a displaced entry's buffer"), (0, "into fresh memory")):
        ms = [t for k, t in zip(kinds, times, strict=True) if k == kind]
        parts.append(f"{len(ms)} {label}" + (f" (p50 {statistics.median(ms):.1f} ms)" if ms else ""))
    return "prompt store saves: " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="requests per user")
    parser.add_argument("--variant", default=VARIANT, help="another GGUF of SmolLM2-135M")
    parser.add_argument("--flash-attn-off", action="store_true", help="the backend's flash_attn: false")
    parser.add_argument("--out", default="bench-results/ttft_trace.json")
    parser.add_argument("--serve", nargs=3, metavar=("CONFIG", "PORT", "EVENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit(traced_serve(args.serve[0], int(args.serve[1]), args.serve[2]))
    model = {"name": MODEL, "backend": "llamacpp", "variant": args.variant, "options": {"n_ctx": 2048}}
    if args.flash_attn_off:
        model["options"]["flash_attn"] = False
    config = lightgate_config([{**model, "max_queue_wait_s": 600}])
    events_path = Path(tempfile.mkdtemp()) / "events.json"
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.ttft_trace", "--serve", str(config), str(port), str(events_path)]
    with server_process(cmd, port, "/ready") as (base, _pid):
        sent = asyncio.run(workload(base, args.rounds))
    events = json.loads(events_path.read_text())
    rows = [r for r in parts(events, sent) if r["round"] > 0]
    table = []
    for key in list(rows[0])[1:-1]:
        values = sorted(r[key] * 1000 for r in rows)
        table.append([key, f"{statistics.median(values):.0f}", f"{statistics.mean(values):.0f}", f"{values[-1]:.0f}"])
    median_rows = statistics.median(r["rows in its step"] for r in rows)
    print(f"{len(rows)} requests after the first wave; {median_rows:.0f} rows in the median own prompt step")
    print(saves(events))
    print_table(["part of TTFT", "p50 ms", "mean ms", "max ms"], table)
    save_json(args.out, rows)


if __name__ == "__main__":
    main()
