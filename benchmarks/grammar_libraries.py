"""Which grammar library constrains Lightgate's engines: xgrammar against llguidance,
on this CPU, with the real vocabularies of the catalog's models (from their GGUFs).

For each library and model: the time to build its tokenizer index (once per
model); the compile time of two grammars, cold and cached (an array of six objects
of four fields; a tool call over five functions), counted to a new matcher's first
mask, since a lazily built grammar pays there (llguidance keeps no compile cache:
its "cached" is a second compile); the cost of one token's mask and advance while
a valid document is fed token by token (mean, p50, p99); and how much of JSON
Schema each enforces: for each feature a schema, a valid document that must be
accepted to the end, and an invalid one that must be refused somewhere.

    .venv/bin/python benchmarks/grammar_libraries.py [--models smollm2 qwen0.5b] [--out FILE]

Needs both libraries (pip install xgrammar llguidance); the Qwen vocabulary needs
`lightgate models fetch qwen2.5-coder-0.5b-instruct-q4_k_m` first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.llamacpp.engine import EngineConfig, LlamaEngine
from benchmarks.common import percentile, print_table, save_json
from compressed_models.catalog import resolve

MODELS = {"smollm2": "smollm2-135m-instruct-q4_1", "qwen0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m"}
console = Console()

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "active"],
    "additionalProperties": False,
}
SIX_PEOPLE = {"type": "array", "items": PERSON, "minItems": 6, "maxItems": 6}
SIX_PEOPLE_DOC = json.dumps(
    [{"name": f"Person {i}", "age": 20 + i, "email": f"p{i}@example.org", "active": i % 2 == 0} for i in range(6)],
    indent=2,
)


def _function(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    arguments = {"type": "object", "properties": properties, "required": list(properties)}
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": {**arguments, "additionalProperties": False}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


FIVE_TOOLS = {
    "anyOf": [
        _function("get_weather", {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}),
        _function("search", {"query": {"type": "string"}, "limit": {"type": "integer", "maximum": 50}}),
        _function("send_email", {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}}),
        _function("create_event", {"title": {"type": "string"}, "start": {"type": "string", "format": "date-time"}}),
        _function("convert", {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}),
    ]
}
FIVE_TOOLS_DOC = json.dumps({"name": "search", "arguments": {"query": "grammar libraries", "limit": 5}})

# (feature, schema, a valid document, an invalid one that breaks only that feature)
FEATURES: list[tuple[str, dict[str, Any], str, str]] = [
    ("required", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, '{"a": 1}', "{}"),
    ("enum", {"enum": ["red", "green"]}, '"red"', '"blue"'),
    ("const", {"const": 42}, "42", "43"),
    ("minLength/maxLength", {"type": "string", "minLength": 2, "maxLength": 3}, '"abc"', '"abcd"'),
    ("pattern", {"type": "string", "pattern": "^[a-z]+-[0-9]{3}$"}, '"abc-123"', '"abc_123"'),
    ("format: date", {"type": "string", "format": "date"}, '"2024-05-01"', '"May 1st"'),
    ("format: email", {"type": "string", "format": "email"}, '"a@b.org"', '"not an email"'),
    ("format: uuid", {"type": "string", "format": "uuid"}, '"123e4567-e89b-12d3-a456-426614174000"', '"1234"'),
    ("minimum/maximum", {"type": "integer", "minimum": 1, "maximum": 10}, "7", "11"),
    ("exclusiveMinimum", {"type": "number", "exclusiveMinimum": 0}, "0.5", "-1"),
    ("multipleOf", {"type": "integer", "multipleOf": 5}, "10", "12"),
    (
        "minItems/maxItems",
        {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
        "[1, 2]",
        "[1]",
    ),
    ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 2]", "[1, 1]"),
    (
        "prefixItems",
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
        '["a", 1]',
        '[1, "a"]',
    ),
    (
        "additionalProperties: false",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        '{"a": 1}',
        '{"a": 1, "b": 2}',
    ),
    ("anyOf", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, '"x"', "true"),
    ("oneOf", {"oneOf": [{"type": "integer"}, {"type": "boolean"}]}, "true", '"x"'),
    (
        "allOf",
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]},
            ]
        },
        '{"a": 1, "b": "x"}',
        '{"a": 1}',
    ),
    (
        "$ref to $defs",
        {
            "$defs": {"p": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
            "type": "array",
            "items": {"$ref": "#/$defs/p"},
        },
        '[{"x": 1}]',
        '[{"x": "1"}]',
    ),
    (
        "recursive $ref",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "v": {"type": "integer"},
                        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    },
                    "required": ["v"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/node",
        },
        '{"v": 1, "kids": [{"v": 2, "kids": []}]}',
        '{"v": 1, "kids": [{"w": 2}]}',
    ),
    ("type list with null", {"type": ["string", "null"]}, "null", "1"),
    (
        "patternProperties",
        {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False},
        '{"x_a": 1}',
        '{"y": 1}',
    ),
    ("minProperties", {"type": "object", "minProperties": 1}, '{"a": 1}', "{}"),
    (
        "if/then",
        {"type": "object", "if": {"properties": {"t": {"const": "a"}}}, "then": {"required": ["x"]}},
        '{"t": "b"}',
        '{"t": "a"}',
    ),
    ("not", {"not": {"type": "integer"}}, '"x"', "1"),
]


class Matcher(Protocol):
    def fill(self, bitmask: npt.NDArray[np.int32]) -> None: ...
    def consume(self, token: int) -> bool: ...


@dataclass
class Library:
    name: str
    index: Callable[[LlamaEngine], Any]  # the tokenizer index for a model
    compile: Callable[[Any, dict[str, Any], bool], Any]  # (index, schema, cached) -> compiled grammar
    matcher: Callable[[Any], Matcher]


class _Xgr:
    def __init__(self, compiled: Any) -> None:
        import xgrammar as xgr

        self.m = xgr.GrammarMatcher(compiled)

    def fill(self, bitmask: npt.NDArray[np.int32]) -> None:
        self.m.fill_next_token_bitmask(bitmask, 0)

    def consume(self, token: int) -> bool:
        return bool(self.m.accept_token(token))


def _xgr_index(engine: LlamaEngine) -> Any:
    import xgrammar as xgr

    vocab = [engine.piece(t) for t in range(engine.n_vocab)]
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=engine.n_vocab, stop_token_ids=engine.eog_ids)
    return {"cold": xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False), "cached": xgr.GrammarCompiler(info)}


def _xgr_compile(index: Any, schema: dict[str, Any], cached: bool) -> Any:
    return index["cached" if cached else "cold"].compile_json_schema(json.dumps(schema), any_whitespace=True)


class _Llg:
    def __init__(self, compiled: Any) -> None:
        import llguidance

        tokenizer, grammar = compiled
        self.m = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.m.is_error():
            raise ValueError(self.m.get_error())

    def fill(self, bitmask: npt.NDArray[np.int32]) -> None:
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask(self.m, bitmask, 0)

    def consume(self, token: int) -> bool:
        return bool(self.m.consume_token(token))


def _llg_index(engine: LlamaEngine) -> Any:
    from llguidance.llamacpp import lltokenizer_from_vocab

    return lltokenizer_from_vocab(engine.vocab, eos_token=engine.eog_ids)


def _llg_compile(index: Any, schema: dict[str, Any], cached: bool) -> Any:
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    error = llguidance.LLMatcher.validate_grammar(grammar, index)
    if error:
        raise ValueError(error)
    return index, grammar  # llguidance builds its lexer lazily: the first mask pays the rest


LIBRARIES = [
    Library("xgrammar", _xgr_index, _xgr_compile, _Xgr),
    Library("llguidance", _llg_index, _llg_compile, _Llg),
]


@dataclass
class Walk:
    accepted: bool  # every token allowed by the mask, and EOS allowed at the end
    rejected_at: int | None = None  # the first token the mask refused
    step_us: list[float] = field(default_factory=list)  # mask + advance, per token


def allowed(bitmask: npt.NDArray[np.int32], token: int) -> bool:
    return bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)


def walk(lib: Library, compiled: Any, tokens: list[int], eos: list[int], words: int) -> Walk:
    matcher = lib.matcher(compiled)
    bitmask = np.zeros((1, words), dtype=np.int32)
    out = Walk(accepted=False)
    for i, token in enumerate(tokens):
        began = time.perf_counter()
        matcher.fill(bitmask)
        ok = allowed(bitmask, token) and matcher.consume(token)
        out.step_us.append((time.perf_counter() - began) * 1e6)
        if not ok:
            out.rejected_at = i
            return out
    matcher.fill(bitmask)
    out.accepted = any(allowed(bitmask, e) for e in eos)
    return out


def measure(lib: Library, engine: LlamaEngine, progress: Progress) -> dict[str, Any]:
    words = (engine.n_vocab + 31) // 32
    began = time.perf_counter()
    index = lib.index(engine)
    row: dict[str, Any] = {"library": lib.name, "index_ms": (time.perf_counter() - began) * 1e3}
    for key, schema, doc in (("six_people", SIX_PEOPLE, SIX_PEOPLE_DOC), ("five_tools", FIVE_TOOLS, FIVE_TOOLS_DOC)):
        tokens = engine.tokenize(doc, add_special=False)
        lib.compile(index, schema, True)  # into the cache, where the library keeps one
        for cached in (False, True):
            began = time.perf_counter()
            compiled = lib.compile(index, schema, cached)
            matcher = lib.matcher(compiled)
            matcher.fill(np.zeros((1, words), dtype=np.int32))  # to the first mask
            row[f"{key}_compile_{'cached' if cached else 'cold'}_ms"] = (time.perf_counter() - began) * 1e3
        result = walk(lib, lib.compile(index, schema, True), tokens, engine.eog_ids, words)
        if not result.accepted:
            raise RuntimeError(f"{lib.name} refused a valid {key} document at token {result.rejected_at}")
        steps = result.step_us[1:]  # the first mask of a fresh matcher is the compile's
        row[f"{key}_tokens"] = len(tokens)
        row[f"{key}_step_us"] = {
            "mean": statistics.fmean(steps),
            "p50": percentile(steps, 50),
            "p99": percentile(steps, 99),
        }
    enforced = {}
    task = progress.add_task(f"{lib.name}: JSON Schema features", total=len(FEATURES))
    for feature, schema, valid, invalid in FEATURES:
        try:
            compiled = lib.compile(index, schema, True)
            ok = walk(lib, compiled, engine.tokenize(valid, add_special=False), engine.eog_ids, words)
            bad = walk(lib, compiled, engine.tokenize(invalid, add_special=False), engine.eog_ids, words)
            verdict = "enforced" if ok.accepted and not bad.accepted else ("ignored" if ok.accepted else "wrong")
        except Exception as exc:  # a schema the library refuses to compile
            verdict = f"refused: {str(exc).splitlines()[0][:80]}"
        enforced[feature] = verdict
        progress.advance(task)
    row["features"] = enforced
    row["enforced"] = sum(v == "enforced" for v in enforced.values())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default="bench-results/grammar_libraries.json")
    args = parser.parse_args()
    results = []
    with Progress(console=console) as progress:
        for short in args.models:
            path = str(resolve(MODELS[short]))
            engine = LlamaEngine(EngineConfig(path, 512, 512, 1, 2, 2, 0, True, None, False))
            for lib in LIBRARIES:
                results.append({"model": short, "n_vocab": engine.n_vocab, **measure(lib, engine, progress)})
            engine.close()
    save_json(args.out, results)
    header = ["model", "library", "index ms", "6 objects: cold / cached ms", "µs per token (p50 / p99)"]
    header += ["5 tools: cold / cached ms", "µs per token (p50 / p99)", "features enforced"]
    rows = []
    for r in results:
        a, b = r["six_people_step_us"], r["five_tools_step_us"]
        rows.append(
            [
                r["model"],
                r["library"],
                f"{r['index_ms']:.0f}",
                f"{r['six_people_compile_cold_ms']:.1f} / {r['six_people_compile_cached_ms']:.1f}",
                f"{a['p50']:.0f} / {a['p99']:.0f}",
                f"{r['five_tools_compile_cold_ms']:.1f} / {r['five_tools_compile_cached_ms']:.1f}",
                f"{b['p50']:.0f} / {b['p99']:.0f}",
                f"{r['enforced']} of {len(FEATURES)}",
            ]
        )
    print_table(header, rows)
    features = [f for f, *_ in FEATURES]
    print()
    print_table(
        ["feature", *[f"{r['library']} ({r['model']})" for r in results]],
        [[f, *[r["features"][f] for r in results]] for f in features],
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
