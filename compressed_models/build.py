"""Building variants. The GGUF ladder: llama.cpp's own quantizer (reachable from
llama-cpp-python) turns a base into Q8_0 ... Q2_K, and each rung becomes a
catalog entry of its own.

The packaged models are already quantized, so the ladder's base is the packaged
file dequantized to F16: it holds exactly the packaged weights, not the original
model's. Rungs above the base's own precision cannot be better than the base;
rungs below it show what more compression costs."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

from compressed_models.catalog import cache_dir, manifest, register, resolve, sha256_of

LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")


def quantize(
    src: Path,
    dst: Path,
    gguf_type: str,
    *,
    output_type: str | None = None,
    allow_requantize: bool = False,
    threads: int = 0,
) -> None:
    """`src` quantized to `gguf_type`; the output layer (the token embedding, where the
    model ties them) to `output_type` where given, else to llama.cpp's choice for the type."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type.upper()}", None)
    if ftype is None:
        raise ValueError(f"unknown GGUF type {gguf_type!r}; llama.cpp knows e.g. {', '.join(LADDER)}, F16")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if output_type is not None:
        params.output_tensor_type = tensor_type(output_type)
    params.allow_requantize = allow_requantize
    params.nthread = threads
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantize {src} to {gguf_type}")
    partial.rename(dst)


def tensor_type(name: str) -> int:
    """llama.cpp's id of a tensor type by name (Q4_0, IQ4_NL, ...)."""
    import llama_cpp

    found = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
    if found is None:
        raise ValueError(f"unknown tensor type {name!r} for the output layer; e.g. Q4_0, IQ4_NL, Q8_0")
    return int(found)


def parameter_count(path: Path) -> int:
    import llama_cpp

    from backends.llamacpp.engine import init_backend

    init_backend(False)
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    try:
        return int(llama_cpp.llama_model_n_params(model))
    finally:
        llama_cpp.llama_model_free(model)


def build_ladder(
    base: str,
    types: list[str],
    *,
    output_type: str | None = None,
    threads: int = 0,
    step: Callable[[str], None] | None = None,
) -> list[str]:
    """Quantize catalog variant `base` to each of `types`; returns the new variants' names.

    `output_type` sets the output layer's type, which llama.cpp otherwise picks
    (Q6_K, or Q8_0 where rows are not a multiple of 256 wide, as SmolLM2's and
    Qwen2.5-0.5B's are). On a CPU that choice decides what a step of a few rows
    costs: ggml interleaves the rows of Q4_0 and IQ4_NL tensors for its batched
    kernels, not Q8_0's, and Qwen2.5-0.5B's output layer (151,936 x 896) is a
    third of its weights. Its Q4_0 GGUF with a Q4_0 output layer steps 4 rows in
    15 ms against 31 (docs/benchmarks.md); the variant's name says it
    (`...-q4_0-output-q4_0-from-...`)."""
    if output_type is not None:
        tensor_type(output_type)  # a misspelt type fails before the F16 base is written
    entry = manifest(base)
    if entry["format"] != "gguf":
        raise ValueError(f"the GGUF ladder starts from a GGUF variant; {base!r} is {entry['format']}")
    stem = base.removesuffix("-" + str(entry["method"]).lower())
    f16 = cache_dir() / f"{stem}-f16-from-{entry['method'].lower()}.gguf"
    if not f16.is_file():
        quantize(resolve(base), f16, "F16", allow_requantize=True, threads=threads)
    n_params = parameter_count(f16)
    made = []
    for gguf_type in types:
        output = f"-output-{output_type.lower()}" if output_type else ""
        name = f"{stem}-{gguf_type.lower()}{output}-from-{entry['method'].lower()}"
        path = cache_dir() / f"{name}.gguf"
        quantize(f16, path, gguf_type, output_type=output_type, threads=threads)
        size = path.stat().st_size
        variant = {
            "name": name,
            "base_model": entry["base_model"],
            "method": gguf_type.upper(),
            "bits_per_weight": round(size * 8 / n_params, 2),
            "format": "gguf",
            "engines": ["llamacpp"],
            "source": {"path": str(path)},
            "size_bytes": size,
            "sha256": sha256_of(path),
            "licence": entry["licence"],
            "provenance": (
                f"llama.cpp's quantizer, {gguf_type.upper()}"
                + (f" with the output layer {output_type.upper()}" if output_type else "")
                + f" from an F16 dequantization of the catalog variant {base} ({entry['method']}):"
                f" it keeps at most {base}'s precision"
            ),
        }
        made.append(register(variant))
        if step is not None:
            step(name)
    return made
