"""The transformers worker's memory estimate, from a folder's config and files: the
weights as the CPU computes them, one sequence's KV cache at full length, torch."""

from __future__ import annotations

import json
from pathlib import Path

from backends.transformers.model import _TORCH_LIBRARIES, host_memory_estimate

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
