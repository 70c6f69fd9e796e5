"""Tool calling, Lightgate beside vLLM's own server (`--enable-auto-tool-choice
--tool-call-parser hermes`) on Qwen2.5-Coder-1.5B-Instruct: 30 prompts against five
tools (single calls, parallel calls, nested arguments, and prompts that need no
tool), each with `tool_choice` "auto" and, for those that need a tool, "required".
Greedy, so each server answers each prompt once and for all.

A prompt scores when the calls name the expected functions (as a multiset; none for
the prompts that need no tool) and every call's arguments validate against its tool's
schema. Reported per server and mode: that share, and the share of calls whose
arguments are schema-valid. Lightgate runs its llamacpp backend on the Q4_K_M GGUF;
vLLM the same weights exported to bf16 (`lightgate models export-hf`), its CPU build.
Then the grammar compile times Lightgate pays, cold and cached, for a response schema
and for the five tools.

    .venv/bin/python benchmarks/tool_calls.py --vllm-python .venv-vllm/bin/python --hf-dir DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import lightgate_config, print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server

console = Console()
MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "HF_HUB_OFFLINE": "1"}


def tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


CITY = {"type": "string", "maxLength": 40}
TOOLS = [
    tool(
        "get_weather",
        "The current weather in a city.",
        {"city": CITY, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city", "unit"],
    ),
    tool("get_time", "The current local time in a city.", {"city": CITY}, ["city"]),
    tool(
        "search_flights",
        "Search flights between two cities on a date.",
        {
            "origin": CITY,
            "destination": CITY,
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        ["origin", "destination", "date", "passengers"],
    ),
    tool(
        "create_event",
        "Create a calendar event with attendees and a reminder.",
        {
            "title": {"type": "string", "maxLength": 60},
            "start": {"type": "string", "maxLength": 30},
            "attendees": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 8},
            "reminder": {
                "type": "object",
                "properties": {
                    "minutes": {"type": "integer", "minimum": 0, "maximum": 1440},
                    "method": {"type": "string", "enum": ["email", "popup"]},
                },
                "required": ["minutes", "method"],
                "additionalProperties": False,
            },
        },
        ["title", "start", "attendees", "reminder"],
    ),
    tool(
        "convert_currency",
        "Convert an amount of money from one currency to another.",
        {
            "amount": {"type": "number"},
            "source": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "target": {"type": "string", "pattern": "^[A-Z]{3}$"},
        },
        ["amount", "source", "target"],
    ),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

# (prompt, the functions it should call; empty: no tool is needed)
PROMPTS: list[tuple[str, list[str]]] = [
    ("What is the weather in Paris, in celsius?", ["get_weather"]),
    ("How hot is it in Phoenix right now, in fahrenheit?", ["get_weather"]),
    ("What time is it in Tokyo?", ["get_time"]),
    ("Tell me the local time in Buenos Aires.", ["get_time"]),
    ("Find flights from London to New York on 2026-12-24 for 2 passengers.", ["search_flights"]),
    ("I need a flight from Berlin to Madrid on 2027-01-15, just me.", ["search_flights"]),
    ("Convert 100 USD to EUR.", ["convert_currency"]),
    ("How many Japanese yen is 250 British pounds?", ["convert_currency"]),
    ("Is it raining in Seattle? Use celsius.", ["get_weather"]),
    ("What's the current hour in Sydney?", ["get_time"]),
    ("Convert 19.99 CHF into USD please.", ["convert_currency"]),
    ("Search for flights from Paris to Rome on 2026-05-01 for 4 people.", ["search_flights"]),
    ("What is the weather in Paris and in Rome, in celsius?", ["get_weather", "get_weather"]),
    ("What time is it in Tokyo and in London?", ["get_time", "get_time"]),
    ("Give me the time in Oslo and the weather there in celsius.", ["get_time", "get_weather"]),
    ("Convert 10 EUR to USD and 10 EUR to GBP.", ["convert_currency", "convert_currency"]),
    ("Weather in Cairo and in Lima, both in fahrenheit.", ["get_weather", "get_weather"]),
    ("What time is it in Delhi, and convert 50 USD to INR.", ["get_time", "convert_currency"]),
    (
        "Create an event 'Team sync' starting 2026-12-01 10:00 with alice@example.com and bob@example.com,"
        " with an email reminder 15 minutes before.",
        ["create_event"],
    ),
    (
        "Schedule 'Dentist' at 2026-12-03 09:30, no attendees, popup reminder 60 minutes before.",
        ["create_event"],
    ),
    (
        "Set up a meeting called 'Budget review' on 2027-02-10 14:00 with carol@example.com, remind me by"
        " popup 10 minutes ahead.",
        ["create_event"],
    ),
    (
        "Book a calendar event 'Launch party' for 2026-12-20 19:00 inviting dan, erin and frank; email"
        " reminder a day before (1440 minutes).",
        ["create_event"],
    ),
    (
        "Create the event 'Standup' at 2026-12-02 09:00 with the whole team (gina@example.com,"
        " hugo@example.com), popup reminder 5 minutes before.",
        ["create_event"],
    ),
    (
        "Make an event 'Lunch with Ivy' on 2026-12-05 12:30 with ivy@example.com and an email reminder 30"
        " minutes before.",
        ["create_event"],
    ),
    ("Write a haiku about autumn.", []),
    ("What is 17 multiplied by 3?", []),
    ("Reply with the single word OK.", []),
    ("Explain in one sentence what a hash map is.", []),
    ("Translate 'thank you' into German.", []),
    ("Write a Python function that reverses a string.", []),
]


def category(prompt: str) -> str:
    index = [p for p, _ in PROMPTS].index(prompt)
    return ("single", "parallel", "nested", "no tool needed")[min(index // 6 - 1, 3) if index >= 12 else 0]


def ask(client: httpx.Client, prompt: str, choice: str) -> dict[str, Any]:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "tools": TOOLS,
        "tool_choice": choice,
        "temperature": 0,
        "max_tokens": 256,
    }
    r = client.post("/v1/chat/completions", json=body)
    if r.status_code != 200:
        return {"error": f"{r.status_code}: {r.text[:200]}"}
    message = r.json()["choices"][0]["message"]
    return {"calls": message.get("tool_calls") or [], "content": message.get("content")}


def score(answer: dict[str, Any], expected: list[str]) -> dict[str, Any]:
    calls = answer.get("calls", [])
    valid = 0
    for call in calls:
        name = call["function"]["name"]
        try:
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
            valid += 1
        except (ValueError, KeyError, jsonschema.ValidationError):
            pass
    names = Counter(c["function"]["name"] for c in calls)
    right = "error" not in answer and names == Counter(expected) and valid == len(calls)
    return {"right": right, "n_calls": len(calls), "valid": valid}


def run_server(name: str, cmd: list[str], port: int, ready: str, env: dict[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    jobs = [(choice, p, e) for choice in ("auto", "required") for p, e in PROMPTS if choice == "auto" or e]
    with (
        server(cmd, port, ready, env) as base,
        httpx.Client(base_url=base, timeout=900) as client,
        Progress(console=console) as progress,
    ):
        task = progress.add_task(name, total=len(jobs))
        for choice, prompt, expected in jobs:
            answer = ask(client, prompt, choice)
            scored = {"prompt": prompt, "category": category(prompt), "expected": expected, **answer}
            out.setdefault(choice, []).append({**scored, **score(answer, expected)})
            progress.advance(task)
    return out


def compile_times(path: str) -> dict[str, float]:
    """Milliseconds to compile (cold) and to get a matcher for a compiled grammar
    (cached): benchmarks/structured.py's response schema, and the five tools (auto)."""
    from backends.base import Constraint
    from backends.llamacpp.engine import EngineConfig, LlamaEngine
    from backends.llamacpp.tokenizer import grammar_index
    from backends.structured import Grammars
    from benchmarks.structured import SCHEMA
    from gateway.protocol import ChatCompletionRequest
    from gateway.tools import FORMATS
    from gateway.tools.events import AnswerShape
    from gateway.tools.hermes import CLOSE, OPEN

    engine = LlamaEngine(EngineConfig(path, 256, 64, 1, 2, 2, 0, True, None, False))
    ids = {m: engine.tokenize(m, add_special=False, parse_special=True) for m in (OPEN, CLOSE)}
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    )
    tools = [(t.function.name, t.function.parameters) for t in body.tools or []]

    def literal(marker: str) -> str:  # as gateway/tools writes a marker: the model's own token
        return f"<[{ids[marker][0]}]>" if len(ids[marker]) == 1 else json.dumps(marker)

    lark = FORMATS["hermes"].grammar(AnswerShape(tools, required=False, parallel=True, literal=literal))
    constraints = {
        "response schema": Constraint("json_schema", json.dumps(SCHEMA)),
        "five tools": Constraint("grammar", lark),
    }
    out: dict[str, float] = {}
    for label, constraint in constraints.items():
        cold, cached = [], []
        for _ in range(5):
            grammars = Grammars(lambda: grammar_index(engine), engine.n_vocab)
            grammars.warm()
            began = time.perf_counter()
            grammars.processor(constraint)
            cold.append(time.perf_counter() - began)
            began = time.perf_counter()
            grammars.processor(constraint)
            cached.append(time.perf_counter() - began)
        out[f"{label}, cold"] = statistics.median(cold) * 1e3
        out[f"{label}, cached"] = statistics.median(cached) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", help="the Python of a venv with vLLM (the peer)")
    parser.add_argument("--hf-dir", help="the model as a Hugging Face folder, for vLLM")
    parser.add_argument("--out", default="bench-results/tool-calls.json")
    args = parser.parse_args()
    path = str(resolve(MODEL))
    results: dict[str, Any] = {}
    port = free_port()
    config = lightgate_config(
        [{"name": "m", "backend": "llamacpp", "path": path, "options": {"n_ctx": 4096, "n_parallel": 1}}]
    )
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    results["lightgate"] = run_server("lightgate", cmd, port, "/ready", None)
    if args.vllm_python and args.hf_dir:
        port = free_port()
        cmd = [
            args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", args.hf_dir,
            "--served-model-name", "m", "--port", str(port), "--max-model-len", "4096", "--dtype", "bfloat16",
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--max-num-seqs", "1",
        ]  # fmt: skip
        results["vllm"] = run_server("vllm", cmd, port, "/health", CPU_ENV)
    compile_ms = compile_times(path)
    save_json(args.out, {"servers": results, "compile_ms": compile_ms})
    rows = []
    for name, modes in results.items():
        for choice, answers in modes.items():
            calls = sum(a["n_calls"] for a in answers)
            rows.append(
                [
                    name,
                    choice,
                    f"{sum(a['right'] for a in answers)} of {len(answers)}",
                    f"{sum(a['valid'] for a in answers)} of {calls}",
                    str(sum(1 for a in answers if "error" in a)),
                ]
            )
    print_table(["server", "tool_choice", "right calls (prompts)", "schema-valid calls", "errors"], rows)
    print()
    kinds = ["single", "parallel", "nested", "no tool needed"]
    print_table(
        ["server, tool_choice", *kinds],
        [
            [f"{name}, {choice}"] + [tally([a for a in answers if a["category"] == k]) for k in kinds]
            for name, modes in results.items()
            for choice, answers in modes.items()
        ],
    )
    figure = Path(args.out).with_suffix(".png")
    plot(results, kinds, figure)
    print()
    print_table(["grammar", "ms (median of 5)"], [[k, f"{v:.2f}"] for k, v in compile_ms.items()])
    console.print(f"wrote {args.out} and {figure}")


def tally(answers: list[dict[str, Any]]) -> str:
    return f"{sum(a['right'] for a in answers)} of {len(answers)}" if answers else "-"


def plot(results: dict[str, Any], kinds: list[str], path: Path) -> None:
    """The share of prompts answered with the right calls, by kind, a bar per server and mode."""
    from loadtest.plots import draw_bars, png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    groups = {}
    for name, modes in results.items():
        for choice, answers in modes.items():
            shares = []
            for k in kinds:
                of = [a for a in answers if a["category"] == k]
                shares.append(sum(a["right"] for a in of) / len(of) if of else 0.0)
            groups[f"{name}, {choice}"] = shares
    draw_bars(ax, kinds, groups)
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("share of prompts right")
    ax.set_title(f"Tool calls on {MODEL} (greedy)")
    ax.legend(loc="upper left", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
