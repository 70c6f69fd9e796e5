"""Exports a GGUF model to a Hugging Face folder (bf16 safetensors + tokenizer), the
format vLLM loads. A helper of benchmarks/batching.py's vLLM peer, run with a Python
that has torch, transformers, accelerate and gguf (vLLM's own venv has the first two):

    VENV/bin/python benchmarks/export_hf.py MODEL.gguf OUT_DIR

transformers dequantizes the GGUF to float on load. Such a model refuses
`save_pretrained` while `config.quantization_config` is set, so the weights move to
a fresh model built from the cleaned config, then are saved in bf16."""

from __future__ import annotations

import sys
from pathlib import Path


def export(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = type(loaded)(config)
    clean.load_state_dict(loaded.state_dict())
    clean.to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    export(Path(sys.argv[1]), Path(sys.argv[2]))
    print(sys.argv[2])
