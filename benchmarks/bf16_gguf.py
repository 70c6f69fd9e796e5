"""BF16 GGUFs of the batching benchmark's models, written beside the catalog's: the
same weights as the bf16 Hugging Face exports vLLM serves (each dequantized from the
packaged GGUF), for llama.cpp's BF16 kernels (AVX-512 BF16 on this CPU). Prints
`MODEL=PATH` pairs for `benchmarks/batching.py --gguf`.

    .venv/bin/python -m benchmarks.bf16_gguf
"""

from __future__ import annotations

from benchmarks.batching import MODELS
from compressed_models.catalog import cache_dir, resolve


def main() -> None:
    import llama_cpp

    for short, variant in MODELS.items():
        target = cache_dir() / f"{variant}-bf16.gguf"
        if not target.is_file():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
            params.allow_requantize = True  # from a quantized GGUF: its weights dequantized, as the export does
            if llama_cpp.llama_model_quantize(str(resolve(variant)).encode(), str(target).encode(), params) != 0:
                raise SystemExit(f"llama.cpp could not write {target}")
        print(f"{short}={target}")


if __name__ == "__main__":
    main()
