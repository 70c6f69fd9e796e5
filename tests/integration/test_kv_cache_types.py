"""KV cache types (`cache_type_k`/`cache_type_v`, llama-server's -ctk/-ctv): cells
stored as q8_0 or q4_0 change the logits by what they round, in that order, and
perplexity says so; a name llama.cpp does not know, or a quantized V without flash
attention, is refused when the model is configured."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from backends.base import GenerationRequest, SamplingParams
from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.engine import CACHE_TYPES, EngineConfig, LlamaEngine
from compressed_models import perplexity, results
from compressed_models.catalog import resolve
from gateway.cli import main as lightgate
from tests.integration.test_perplexity import CTX, LLAMACPP, RAW, TEXT

PATH = str(resolve("smollm2-135m-instruct-q4_1"))
PROMPT = "The library opens at nine in the morning and closes at six in the evening. On Saturdays it"


def _logits(cache_type: str) -> np.ndarray:
    t = CACHE_TYPES[cache_type]
    engine = LlamaEngine(EngineConfig(PATH, 256, 256, 1, 2, 2, 0, True, None, False, type_k=t, type_v=t))
    try:
        tokens = engine.tokenize(PROMPT)
        engine.decode(tokens, list(range(len(tokens))), [0] * len(tokens), [False] * (len(tokens) - 1) + [True])
        return np.array(engine.logits(len(tokens) - 1))
    finally:
        engine.close()


def test_quantized_cells_move_the_logits_by_what_they_round() -> None:
    exact = _logits("f32")
    error = {t: float(np.abs(_logits(t) - exact).max()) for t in ("f16", "q8_0", "q4_0")}
    assert error["f16"] < error["q8_0"] < error["q4_0"], error
    assert error["q4_0"] < 0.2 * float(exact.max() - exact.min())  # rounding, not garbage


def test_a_backend_serves_with_quantized_cells() -> None:
    backend = LlamaCppBackend(PATH, n_ctx=256, n_parallel=2, cache_type_k="q8_0", cache_type_v="q8_0")

    async def run() -> str:
        await backend.start()
        try:
            req = GenerationRequest("r", backend.tokenize(PROMPT), SamplingParams(max_tokens=8, temperature=0))
            return "".join([c.text async for c in backend.generate(req)])
        finally:
            await backend.stop()

    assert asyncio.run(run()).strip()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"cache_type_k": "q3_k"}, "cache_type_k"),
        ({"cache_type_v": "fp8"}, "cache_type_v"),
        ({"cache_type_v": "q8_0", "flash_attn": False}, "flash attention"),
    ],
)
def test_a_cache_type_it_cannot_use_is_refused_by_name(options: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        LlamaCppBackend(PATH, **options)


def test_perplexity_reads_the_cache_type_and_keeps_the_variants_own_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f16 = perplexity.with_engine(PATH, TEXT, LLAMACPP, max_chunks=1)
    q4 = perplexity.with_engine(PATH, TEXT, LLAMACPP, max_chunks=1, cache_types=("q4_0", "q4_0"))
    assert q4.tokens_scored == f16.tokens_scored and q4.ppl != f16.ppl
    monkeypatch.setenv("LIGHTGATE_CACHE", str(tmp_path / "cache"))
    text, out = tmp_path / "text.raw", tmp_path / "ppl.json"
    text.write_text(RAW)
    args = ["eval", "ppl", "smollm2-135m-instruct-q4_1", "--text", str(text), "--ctx", str(CTX), "--max-chunks", "1"]
    assert lightgate([*args, "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert (record["cache_type_k"], record["cache_type_v"]) == ("q8_0", "q8_0") and record["ppl"] > 1
    by_fa = {}
    for fa in ("on", "off"):  # off: as the backend runs on a CPU with a stream per slot
        assert lightgate([*args, "--flash-attn", fa, "--out", str(out)]) == 0
        by_fa[fa] = json.loads(out.read_text())
        assert by_fa[fa]["flash_attn"] == fa
    on, off = by_fa["on"]["ppl"], by_fa["off"]["ppl"]
    assert on != off and abs(on - off) < 0.05 * on  # another order of sums, not another model
    assert results.load("smollm2-135m-instruct-q4_1") == {}  # bench compare's figure is the f16 cache's


@pytest.mark.parametrize(
    ("variant", "extra"),
    [
        ("smollm2-135m-instruct-q4_1", ["--cache-type-k", "q3_k"]),  # not a cell type llama.cpp takes
        ("smollm2-135m-instruct-q4_1", ["--cache-type-v", "q8_0", "--base-url", "http://127.0.0.1:9"]),  # a server
        ("smollm2-135m-instruct-bf16-from-q4_1", ["--cache-type-k", "q8_0"]),  # PyTorch would ignore it
        ("smollm2-135m-instruct-q4_1", ["--flash-attn", "off", "--base-url", "http://127.0.0.1:9"]),  # a server
        ("smollm2-135m-instruct-q4_1", ["--cache-type-v", "q8_0", "--flash-attn", "off"]),  # plain attention: f16 V
    ],
)
def test_eval_ppl_refuses_a_cache_type_it_cannot_honour(variant: str, extra: list[str], tmp_path: Path) -> None:
    out = tmp_path / "ppl.json"
    assert lightgate(["eval", "ppl", variant, "--max-chunks", "1", "--out", str(out), *extra]) == 2
    assert not out.exists()
