"""What the GPU recipes decide before any library runs: group sizes that divide
the model, the compressed-tensors scheme per method, exllamav2's command line,
and the parameter count an EXL2 folder's bits per weight is measured against."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from compressed_models import catalog, gpu_recipes


def test_group_size_divides_every_layer() -> None:
    assert gpu_recipes.group_size([4096, 11008]) == 128
    assert gpu_recipes.group_size([576, 1536]) == 64  # SmolLM2: 576 is not a multiple of 128
    assert gpu_recipes.group_size([896, 4864]) == 128  # Qwen2.5 0.5B
    with pytest.raises(ValueError, match="no group size"):
        gpu_recipes.group_size([100])


def test_schemes_follow_the_methods() -> None:
    gptq = gpu_recipes.llmcompressor_scheme("gptq", 4, 64)["group_0"]
    awq = gpu_recipes.llmcompressor_scheme("awq", 4, 64)["group_0"]
    assert gptq["weights"] == {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}
    assert awq["weights"]["symmetric"] is False  # AWQ's scales go with zero points
    assert gptq["targets"] == ["Linear"]
    with pytest.raises(ValueError, match="4 or 8"):
        gpu_recipes.llmcompressor_scheme("gptq", 3, 64)


def test_exl2_runs_the_converter_offline(tmp_path: Path) -> None:
    command = gpu_recipes.exl2_command(tmp_path / "in", tmp_path / "work", tmp_path / "out", 4.5)
    assert command[1:3] == ["-m", "exllamav2.conversion.convert_exl2"]
    args = dict(zip(command[3::2], command[4::2], strict=False))
    assert args["-i"] == str(tmp_path / "in") and args["-cf"] == str(tmp_path / "out") and args["-b"] == "4.5"
    assert "-c" not in command  # its packaged calibration data: no download


def test_parameter_count_of_a_llama_config() -> None:
    smollm2 = SimpleNamespace(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
    )  # fmt: skip
    assert gpu_recipes._approx_params(smollm2) == 134_515_008  # what PyTorch counts for SmolLM2-135M


def test_a_folder_variant_names_its_one_weights_file(tmp_path: Path) -> None:
    (tmp_path / "output.safetensors").write_bytes(b"x")  # exllamav2's name for it
    assert catalog.weights_file(tmp_path) == tmp_path / "output.safetensors"
    (tmp_path / "output-2.safetensors").write_bytes(b"x")
    with pytest.raises(catalog.VariantNotFound, match=r"2 \.safetensors files"):
        catalog.weights_file(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert catalog.weights_file(tmp_path) == tmp_path / "model.safetensors"
