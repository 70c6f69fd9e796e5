"""The workers' memory estimates before a first run. transformers, from a folder's
config and files: the weights as the CPU (or a GPU) computes them, one sequence's KV
cache at full length, torch (or the CUDA context). llama.cpp on a GPU: the offloaded
layers' share of the GGUF and of the KV cells."""

from __future__ import annotations

import json
from pathlib import Path

from backends.memory import CUDA_CONTEXT_BYTES
from backends.transformers.backend import TransformersBackend
from backends.transformers.model import _TORCH_LIBRARIES, gpu_memory_estimate, host_memory_estimate

CONFIG = {
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "hidden_size": 512,
    "max_position_embeddings": 1024,
}


def _folder(tmp_path: Path, config: dict[str, object], weights: int, *, quanto: bool = False) -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * weights)
    (tmp_path / "tokenizer.json").write_text("{}")  # not weights: not counted
    if quanto:
        (tmp_path / "quanto_qmap.json").write_text("{}")
    return tmp_path


def test_a_bf16_folder_is_counted_as_float32_on_the_cpu_beside_its_stored_copy(tmp_path: Path) -> None:
    folder = _folder(tmp_path, CONFIG | {"dtype": "bfloat16"}, 1000)
    kv = 2 * 4 * 2 * 64 * 1024 * 4  # keys and values, layers, KV heads, head width, positions, float32
    # The float32 copy, and the stored one while it is made.
    assert host_memory_estimate(folder, "auto", 4096) == 2000 + 1000 + kv + _TORCH_LIBRARIES
    # Asked to compute in bf16, the weights stay as stored and the cache halves.
    assert host_memory_estimate(folder, "bfloat16", 4096) == 1000 + kv // 2 + _TORCH_LIBRARIES


def test_the_cache_is_as_long_as_the_shorter_of_the_two_limits(tmp_path: Path) -> None:
    folder = _folder(tmp_path, CONFIG | {"dtype": "float32"}, 1000)
    per_position = 2 * 4 * 2 * 64 * 4
    assert host_memory_estimate(folder, "auto", 256) == 1000 + 256 * per_position + _TORCH_LIBRARIES


def test_quantized_folders_count_twice_their_files(tmp_path: Path) -> None:
    kv = 2 * 4 * 2 * 64 * 1024 * 4
    quanto = _folder(tmp_path / "quanto", CONFIG | {"dtype": "bfloat16"}, 1000, quanto=True)
    assert host_memory_estimate(quanto, "auto", 4096) == 2000 + kv + _TORCH_LIBRARIES
    packed = _folder(tmp_path / "ct", CONFIG | {"quantization_config": {"format": "pack-quantized"}}, 1000)
    assert host_memory_estimate(packed, "auto", 4096) == 2000 + kv + _TORCH_LIBRARIES


def test_on_a_gpu_the_weights_are_counted_as_computed_there_with_the_cuda_context(tmp_path: Path) -> None:
    folder = _folder(tmp_path, CONFIG | {"dtype": "bfloat16"}, 1000)
    kv_bf16 = 2 * 4 * 2 * 64 * 1024 * 2
    assert gpu_memory_estimate(folder, "auto", 4096) == 1000 + kv_bf16 + CUDA_CONTEXT_BYTES
    cpu = TransformersBackend.gpu_memory_estimate(str(folder), {"device": "cpu"})
    cuda1 = TransformersBackend.gpu_memory_estimate(str(folder), {"device": "cuda:1"})
    assert cpu == {} and cuda1 == {1: 1000 + kv_bf16 + CUDA_CONTEXT_BYTES}


def test_a_gguf_with_layers_on_a_gpu_counts_their_share_there() -> None:
    """SmolLM2 (30 layers; the output layer is one more): with every layer offloaded,
    the whole file, every slot's KV cells, the logits and the CUDA context."""
    from backends.llamacpp.backend import LlamaCppBackend
    from backends.llamacpp.engine import LlamaVocab
    from compressed_models.catalog import resolve

    path = str(resolve("smollm2-135m-instruct-q4_1"))
    vocab = LlamaVocab(path)
    n_layer, cell, n_vocab = vocab.hparam("block_count"), vocab.kv_cell_bytes("f16", "f16"), vocab.n_vocab
    vocab.close()
    assert n_layer == 30
    size = Path(path).stat().st_size
    options: dict[str, object] = {"n_ctx": 512, "n_parallel": 4, "n_batch": 256}
    logits = (256 + 4) * n_vocab * 4
    assert LlamaCppBackend.gpu_memory_estimate(path, options) == {}  # n_gpu_layers 0: all on the CPU
    whole = LlamaCppBackend.gpu_memory_estimate(path, options | {"n_gpu_layers": -1})
    assert whole == {0: size + 4 * 512 * cell + logits + CUDA_CONTEXT_BYTES}
    assert LlamaCppBackend.gpu_memory_estimate(path, options | {"n_gpu_layers": 99}) == whole
    half = LlamaCppBackend.gpu_memory_estimate(path, options | {"n_gpu_layers": 15})
    assert half == {0: size * 15 // 31 + 4 * 512 * cell // 2 + logits + CUDA_CONTEXT_BYTES}


def test_with_speculation_the_history_of_answers_is_counted_and_bounds_what_it_holds() -> None:
    """The llamacpp estimate adds `speculate_history` tokens at `History.TOKEN_BYTES`
    with speculation (none without), and a full History holds no more than that."""
    import random
    import tracemalloc

    from backends.llamacpp.backend import LlamaCppBackend
    from backends.lookup import History
    from compressed_models.catalog import resolve

    path = str(resolve("smollm2-135m-instruct-q4_1"))
    plain = LlamaCppBackend.memory_estimate(path, {"speculate": "none"})
    assert LlamaCppBackend.memory_estimate(path, {"speculate": "ngram", "speculate_history": 0}) == plain
    speculating = LlamaCppBackend.memory_estimate(path, {"speculate": "ngram", "speculate_history": 20_000})
    assert speculating == plain + 20_000 * History.TOKEN_BYTES

    rng = random.Random(0)
    texts = [[rng.randrange(150_000) for _ in range(500)] for _ in range(50)]  # a vocabulary's worth of ids
    tracemalloc.start()
    history = History(20_000)
    for text in texts:
        history.add(text)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert history.size == 20_000
    assert held <= history.size * History.TOKEN_BYTES
