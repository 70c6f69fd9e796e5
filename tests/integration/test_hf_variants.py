"""Hugging Face variants, end to end through the CLI on the real SmolLM2: the GGUF
exported to bf16 safetensors scores the perplexity llama.cpp gives the GGUF (two
engines, one protocol); Wanda-SP pruning cuts what it says, the pruned model still
models the text, and its scores choose better channels than chance; quanto's
int8 keeps the perplexity, int4 costs some; the GPU recipes refuse clearly here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import GenerationRequest, SamplingParams
from backends.transformers.backend import TransformersBackend
from backends.transformers.model import is_quanto, load_causal_lm
from compressed_models import catalog, hf, perplexity
from gateway.cli import main as lightgate
from loadtest.prompts import WIKITEXT

BASE = "smollm2-135m-instruct-q4_1"
EXPORT = "smollm2-135m-instruct-bf16-from-q4_1"
PRUNED = EXPORT + "-pruned-wanda-sp-20"
PROTOCOL = perplexity.Protocol.of("llamacpp", 256)


@pytest.fixture(scope="module")
def raw() -> str:
    return WIKITEXT.read_text(encoding="utf-8")[:40_000]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setenv("LIGHTGATE_CACHE", str(root))
    assert lightgate(["models", "export-hf", BASE]) == 0
    valid = WIKITEXT.with_name("wiki.valid.raw")
    args = ["models", "prune", EXPORT, "--sparsity", "0.2", "--samples", "8", "--length", "128"]
    assert lightgate([*args, "--calibration", str(valid)]) == 0
    assert lightgate(["models", "quantize", EXPORT, "--method", "quanto-int8", "quanto-int4"]) == 0
    yield root
    mp.undo()


def ppl(folder: Path, raw: str) -> float:
    return hf.perplexity_with_transformers(folder, raw, PROTOCOL, max_chunks=3).ppl


def test_pytorch_and_llamacpp_agree_on_perplexity(cache: Path, raw: str) -> None:
    ours = ppl(catalog.resolve(EXPORT), raw)
    gguf = perplexity.with_engine(str(catalog.resolve(BASE)), raw, PROTOCOL, max_chunks=3).ppl
    # bf16 rounding of the dequantized weights and float32 attention move it by well under 2%.
    assert ours == pytest.approx(gguf, rel=0.02)


def test_wanda_sp_cuts_a_fifth_of_every_mlp_and_beats_chance(cache: Path, tmp_path: Path, raw: str) -> None:
    import torch

    pruned = catalog.resolve(PRUNED)
    config = json.loads((pruned / "config.json").read_text())
    assert config["intermediate_size"] == 1536 - round(1536 * 0.2)
    assert catalog.manifest(PRUNED)["method"] == "pruned-wanda-sp-20"
    base, cut = ppl(catalog.resolve(EXPORT), raw), ppl(pruned, raw)
    assert base < cut < 3 * base  # it costs something, and it still models the text
    model, tokenizer = hf._load(catalog.resolve(EXPORT))
    generator = torch.Generator().manual_seed(0)
    keep = [torch.sort(torch.randperm(1536, generator=generator)[: config["intermediate_size"]]).values]
    hf.cut_mlp_channels(model, keep * len(model.model.layers))
    hf._save(model, tokenizer, tmp_path / "random")
    assert cut < ppl(tmp_path / "random", raw)  # the scores pick better channels than chance


def test_eval_ppl_scores_a_hugging_face_variant_with_pytorch(cache: Path, tmp_path: Path, raw: str) -> None:
    text, out = tmp_path / "text.raw", tmp_path / "ppl.json"
    text.write_text(raw)
    args = ["eval", "ppl", PRUNED, "--text", str(text), "--ctx", "256", "--max-chunks", "3", "--out", str(out)]
    assert lightgate(args) == 0
    record = json.loads(out.read_text())
    assert record["where"].startswith("transformers:")
    assert record["ppl"] == pytest.approx(ppl(catalog.resolve(PRUNED), raw), rel=1e-6)


def test_quanto_int8_keeps_the_perplexity_and_int4_costs_some(cache: Path, raw: str) -> None:
    int8, int4 = EXPORT + "-quanto-int8", EXPORT + "-quanto-int4"
    for name in (int8, int4):
        assert is_quanto(catalog.verify(name))
        assert catalog.manifest(name)["engines"] == ["transformers"]  # quanto's layout is PyTorch's alone
    bf16_size = catalog.manifest(EXPORT)["size_bytes"]
    assert catalog.manifest(int4)["size_bytes"] < catalog.manifest(int8)["size_bytes"] < 0.7 * bf16_size
    model, _ = load_causal_lm(catalog.resolve(int8))
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "QLinear"  # quantized layers, not dequantized copies
    base, q8, q4 = ppl(catalog.resolve(EXPORT), raw), ppl(catalog.resolve(int8), raw), ppl(catalog.resolve(int4), raw)
    assert q8 == pytest.approx(base, rel=0.02)
    assert q8 < q4 < 3 * base


def test_the_transformers_backend_serves_the_quanto_variants(cache: Path) -> None:
    """int4 once failed every request ("Cannot set version_counter for inference tensor")."""

    async def first_tokens(name: str) -> str:
        backend = TransformersBackend(str(catalog.resolve(name)), max_model_len=256)
        await backend.start()
        try:
            req = GenerationRequest("q", backend.tokenize("The capital of France is"), SamplingParams(4, 0.0))
            return "".join([c.text async for c in backend.generate(req)])
        finally:
            await backend.stop()

    for name in (EXPORT + "-quanto-int8", EXPORT + "-quanto-int4"):
        assert asyncio.run(first_tokens(name)).strip(), name


def test_gpu_recipes_refuse_clearly_where_their_library_is_missing(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compressed_models import gpu_recipes

    # llmcompressor pins an older transformers, so it is never in the project's venv;
    # exllamav2 cannot import without CUDA.
    assert lightgate(["models", "quantize", EXPORT, "--method", "gptq"]) == 1
    assert "llmcompressor" in capsys.readouterr().out
    assert lightgate(["models", "quantize", EXPORT, "--method", "exl2", "--bits", "4.0"]) == 1
    assert "exllamav2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Hugging Face bf16 variant"):
        gpu_recipes.quantize_llmcompressor(BASE, "gptq", "text")  # a GGUF is not a starting point
    with pytest.raises(ValueError, match="Hugging Face bf16 variant"):
        gpu_recipes.quantize_llmcompressor(EXPORT + "-quanto-int8", "gptq", "text")  # nor a quantized one


def test_the_export_is_a_checked_catalog_variant_and_corruption_is_caught(cache: Path) -> None:
    entry = catalog.manifest(EXPORT)
    assert (entry["format"], entry["method"], entry["bits_per_weight"]) == ("hf-safetensors", "bf16", 16.0)
    folder = catalog.verify(EXPORT)  # size and sha256 of model.safetensors
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    (folder / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(catalog.VariantNotFound, match="bytes, not"):
        catalog.verify(EXPORT)
