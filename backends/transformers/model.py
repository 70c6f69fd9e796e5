"""Loading a Hugging Face folder for inference: plain safetensors (bf16 exports,
pruned variants, compressed-tensors GPTQ/AWQ folders) through transformers, and
optimum-quanto folders, recognised by the `quanto_qmap.json` quanto writes beside
the weights, through quanto's own loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_quanto(folder: Path) -> bool:
    return (folder / "quanto_qmap.json").is_file()


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
