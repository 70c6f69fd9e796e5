"""Constrained decoding for the engines that sample themselves (llama.cpp, speculative,
PyTorch), with llguidance: a request's `Constraint` (a JSON Schema, any JSON object, a
regex, a choice, a Lark or GBNF grammar) compiled once per model and kept, then one
`GrammarProcessor` per sequence, applied at the sampling seam (backends/sampling.py):
the token mask of what may come next. docs/benchmarks.md says why llguidance and not
xgrammar (measured: it enforces more of JSON Schema and refuses what it cannot do,
and needs no torch)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import Any

import numpy as np
import numpy.typing as npt

from backends.base import Chunk, Constraint, GenerationRequest, UnsupportedFeature

GRAMMAR_CACHE = 256  # compiled grammars kept per model, least recently used dropped
# Between JSON tokens, one space or a newline and up to 20 of indentation (llama.cpp's
# own rule): enough for compact and pretty JSON, and a model cannot loop on whitespace.
JSON_WHITESPACE = r"(?: |\n[ \t]{0,20})?"


def grammar_of(constraint: Constraint) -> str:
    """The constraint as an llguidance grammar (not yet checked)."""
    import llguidance
    from llguidance.gbnf_to_lark import any_to_lark

    spec = constraint.spec
    match constraint.kind:
        case "json_schema":
            return str(
                llguidance.LLMatcher.grammar_from_json_schema(spec, defaults={"whitespace_pattern": JSON_WHITESPACE})
            )
        case "json_object":
            schema = {"type": "object"}
            return str(
                llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_pattern": JSON_WHITESPACE})
            )
        case "regex":
            return str(llguidance.LLMatcher.grammar_from_regex(spec))
        case "choice":  # exactly one of the strings (a JSON list)
            options = " | ".join(json.dumps(choice) for choice in json.loads(spec))
            return str(llguidance.LLMatcher.grammar_from_lark(f"start: {options}"))
        case "grammar":  # Lark as llguidance reads it, or llama.cpp's GBNF
            return str(llguidance.LLMatcher.grammar_from_lark(any_to_lark(spec)))
    raise ValueError(f"unknown constraint kind {constraint.kind!r}")


class Grammars:
    """One model's grammars: llguidance's index of its vocabulary (built once, in
    about a second) and a matcher per compiled constraint, copied for each sequence
    (a copy costs microseconds where a compile costs milliseconds)."""

    def __init__(self, make_tokenizer: Callable[[], Any], n_logits: int) -> None:
        self._make_tokenizer = make_tokenizer
        self.n_logits = n_logits  # the width of the engine's logits rows (the mask's)
        self._tokenizer: Any = None
        self._compiled: OrderedDict[Constraint, Any] = OrderedDict()
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Build the vocabulary index now (a backend calls it in a thread at start)."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._make_tokenizer()

    def processor(self, constraint: Constraint) -> GrammarProcessor:
        """A fresh matcher for one sequence. Compiles on first use; a grammar the
        library cannot build is the client's error, naming the field it came from."""
        import llguidance

        self.warm()
        with self._lock:
            template = self._compiled.get(constraint)
            if template is not None:
                self._compiled.move_to_end(constraint)
        if template is None:
            try:
                grammar = grammar_of(constraint)
            except ValueError as exc:
                raise UnsupportedFeature(f"{constraint.param}: {exc}", constraint.param) from exc
            error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
            if error:
                raise UnsupportedFeature(f"{constraint.param} cannot be enforced: {error}", constraint.param)
            template = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
            if template.is_error():
                raise UnsupportedFeature(
                    f"{constraint.param} cannot be enforced: {template.get_error()}", constraint.param
                )
            with self._lock:
                self._compiled[constraint] = template
                while len(self._compiled) > GRAMMAR_CACHE:
                    self._compiled.popitem(last=False)
        return GrammarProcessor(template.deep_copy(), self.n_logits)

    def compiled(self, constraint: Constraint) -> bool:
        return constraint in self._compiled


async def constrained(
    req: GenerationRequest, grammars: Grammars, stream: Callable[[GenerationRequest], AsyncGenerator[Chunk, None]]
) -> AsyncGenerator[Chunk, None]:
    """`stream(req)` with the request's constraint as one more logits processor. A
    grammar compiles on a worker thread the first time (milliseconds, more for a
    large schema), so the event loop never waits on it; a compiled one is copied."""
    constraint = req.params.constraint
    assert constraint is not None
    if grammars.compiled(constraint):
        processor = grammars.processor(constraint)
    else:
        processor = await asyncio.to_thread(grammars.processor, constraint)
    params = dataclasses.replace(req.params, logits_processors=(*req.params.logits_processors, processor))
    async with aclosing(stream(dataclasses.replace(req, params=params))) as chunks:
        async for chunk in chunks:
            yield chunk


class GrammarProcessor:
    """One sequence's grammar as a logits processor. It follows the history it is
    given: forward by consuming the new tokens, back by rolling back when a
    speculative step tried tokens and kept fewer. A history that holds a token the
    grammar refuses (a row after a rejected draft token, never sampled from) is left
    unconstrained. `prepare` computes the next mask ahead, on another thread, while
    the engine decodes; the call then only applies it."""

    def __init__(self, matcher: Any, n_logits: int) -> None:
        self.matcher = matcher
        self.n_logits = n_logits
        self.consumed: list[int] = []  # what the matcher has taken: a prefix of the last history
        self.bitmask = np.zeros((1, (n_logits + 31) // 32), dtype=np.int32)
        # The mask, ready to apply: the ids that may come when they are few (inside JSON's
        # structure), else a row to add, 0.0 where a token may come and -inf where not.
        self._allowed: npt.NDArray[np.intp] | None = None
        self._penalty = np.zeros((self.bitmask.size * 4, 8), dtype=np.float32)
        self._fresh = False  # the mask is for the matcher's current state
        self._off_grammar = False  # the last history went where the grammar refuses

    def prepare(self, generated: Sequence[int]) -> None:
        self._follow(generated)
        if not self._off_grammar:
            self._fill()

    def __call__(self, generated: Sequence[int], logits: npt.NDArray[np.float32]) -> None:
        self._follow(generated)
        if self._off_grammar:
            return
        self._fill()
        if self._allowed is not None:
            kept = logits[self._allowed]
            logits.fill(-np.inf)
            logits[self._allowed] = kept
        else:
            np.add(logits, self._penalty.reshape(-1)[: len(logits)], out=logits)

    def _follow(self, history: Sequence[int]) -> None:
        n = len(self.consumed)
        if list(history[:n]) == self.consumed:
            common = n  # the usual case: the history grew
        else:
            common = 0
            while common < min(n, len(history)) and self.consumed[common] == history[common]:
                common += 1
            self.matcher.rollback(n - common)
            del self.consumed[common:]
            self._fresh = False
        rest = list(history[common:])
        if rest:
            taken = self.matcher.try_consume_tokens(rest)
            self.consumed.extend(rest[:taken])
            self._fresh = self._fresh and taken == 0
        self._off_grammar = len(self.consumed) < len(history)

    def _fill(self) -> None:
        if self._fresh:
            return
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        words = self.bitmask[0]
        nonzero = np.flatnonzero(words)
        if len(nonzero) * 8 < len(words):  # few may come: their ids (word * 32 + bit)
            bits = np.unpackbits(words[nonzero].view(np.uint8), bitorder="little").reshape(len(nonzero), 32)
            word, bit = np.nonzero(bits)
            allowed = nonzero[word] * 32 + bit
            self._allowed = allowed[allowed < self.n_logits]
        else:  # most may come: a row to add, 8 tokens per byte of the mask at a time
            np.take(_BYTE_TO_ROW, words.view(np.uint8), axis=0, out=self._penalty)
            self._allowed = None
        self._fresh = True


# For each value of a mask byte, what its 8 tokens add to their logits (bit j: token j).
_BYTE_TO_ROW = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1, 0.0, -np.inf
).astype(np.float32)
