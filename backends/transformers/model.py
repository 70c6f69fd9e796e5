"""Loading a Hugging Face folder for inference: plain safetensors (bf16 exports,
pruned variants, compressed-tensors GPTQ/AWQ folders) through transformers, and
optimum-quanto folders, recognised by the `quanto_qmap.json` quanto writes beside
the weights, through quanto's own loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backends.memory import CUDA_CONTEXT_BYTES

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# A worker with torch and transformers imported (245 MiB measured before a model's own
# modules load; 384 fits the bf16 SmolLM2 worker's measured peak).
_TORCH_LIBRARIES = 384 * 2**20


def is_quanto(folder: Path) -> bool:
    return (folder / "quanto_qmap.json").is_file()


def host_memory_estimate(folder: Path, dtype: str, max_model_len: int) -> int:
    """What a worker running this folder on the CPU will hold at its peak, before it
    has run (the memory budget's first guess; its measured peak replaces it after the
    first run): the weights as computed (a bf16 export is upcast to float32 on the CPU,
    and while it is, the stored copy is held too), the KV cache of its one sequence at
    full length, and torch. Quantized folders (quanto, compressed-tensors) count twice
    their files: quanto's int8 and int4 SmolLM2 (269 MB on disk) peaked at 830 and
    1,026 MiB with torch. The bf16 SmolLM2 export at max_model_len 512: 1,176 MiB
    estimated, 1,175 MiB measured (benchmarks/memory_estimate.py)."""
    on_disk, weights, kv = _sizes(folder, "float32" if dtype == "auto" else dtype, max_model_len)
    upcast_from_stored = on_disk if weights != on_disk and not _quantized(folder) else 0
    return weights + upcast_from_stored + kv + _TORCH_LIBRARIES


def gpu_memory_estimate(folder: Path, dtype: str, max_model_len: int) -> int:
    """What a worker running this folder on a GPU will hold there, before it has run:
    the weights in the compute type (bfloat16 by default), one sequence's KV cache,
    and the CUDA context (the host keeps torch and the copy read from disk)."""
    _, weights, kv = _sizes(folder, "bfloat16" if dtype == "auto" else dtype, max_model_len)
    return weights + kv + CUDA_CONTEXT_BYTES


def _quantized(folder: Path) -> bool:
    return is_quanto(folder) or "quantization_config" in json.loads((folder / "config.json").read_text())


def _sizes(folder: Path, compute_dtype: str, max_model_len: int) -> tuple[int, int, int]:
    """(the weight files, the weights as computed in `compute_dtype`, one sequence's KV
    cache at full length)."""
    config = json.loads((folder / "config.json").read_text())
    files = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    on_disk = sum(f.stat().st_size for f in files)
    compute = _DTYPE_BYTES.get(compute_dtype, 4)
    if _quantized(folder):
        weights = 2 * on_disk  # packed weights and their unpacked working copies
    else:
        stored = _DTYPE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4)
        weights = on_disk * compute // stored
    text = config.get("text_config", config)  # multimodal configs nest the language model's
    n_layer, n_head = int(text["num_hidden_layers"]), int(text["num_attention_heads"])
    head = int(text.get("head_dim") or int(text["hidden_size"]) // n_head)
    length = min(max_model_len, int(text.get("max_position_embeddings") or max_model_len))
    kv = 2 * n_layer * int(text.get("num_key_value_heads") or n_head) * head * length * compute
    return on_disk, weights, kv


def placement(device: str, dtype: str, n_threads: int) -> tuple[str, str]:
    """(device, dtype) for `auto` settings: CUDA when torch sees a GPU, else the CPU;
    bfloat16 on CUDA, float32 on the CPU (faster there than bf16). Sets torch's threads."""
    import torch

    if n_threads:
        torch.set_num_threads(n_threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return device, dtype if dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")


def load_causal_lm(folder: Path, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer), in inference mode on `device`. A quanto folder keeps the
    dtype it was saved in: its int weights are dequantized to it in each matmul."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any
    if is_quanto(folder):
        from optimum.quanto import QuantizedModelForCausalLM

        model = QuantizedModelForCausalLM.from_pretrained(str(folder))._wrapped
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    model.to(device)
    model.train(False)  # inference: no dropout
    return model, AutoTokenizer.from_pretrained(str(folder))
