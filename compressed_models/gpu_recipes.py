"""The GPU recipes: GPTQ and AWQ through llmcompressor (compressed-tensors folders
that vLLM and transformers load), EXL2 through exllamav2's own converter. Each
starts from a bf16 Hugging Face variant (`lightgate models export-hf`) and ends
as a catalog entry, like every other variant.

They are meant for a CUDA machine: GPTQ and AWQ solve per-layer least-squares
problems over calibration activations (minutes on a GPU, far longer on a CPU),
and exllamav2's converter needs CUDA to import at all. The libraries are not
dependencies of Lightgate (llmcompressor pins its own transformers); a missing
one is a clear error naming what to install.

Calibration text is WikiText-2 validation, as for pruning, so every variant is
calibrated on the same text and none on the test split it is scored on."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from compressed_models.catalog import cache_dir, register, resolve, sha256_of, weights_file
from compressed_models.hf import Step, _entry, _hf_variant, calibration

METHODS = ("gptq", "awq", "exl2")
INSTALL = {"gptq": "llmcompressor", "awq": "llmcompressor", "exl2": "exllamav2"}


class RecipeUnavailable(RuntimeError):
    """The library a recipe needs is not installed, or the machine cannot run it."""


def require(method: str) -> None:
    module = INSTALL[method]
    if importlib.util.find_spec(module) is None:
        raise RecipeUnavailable(f"{method} needs the {module} package (pip install {module}) on a CUDA machine")


def group_size(widths: list[int], largest: int = 128) -> int:
    """The largest power-of-two group (<= `largest`, >= 32) that divides every
    layer's input width: compressed-tensors refuses ragged groups, and small
    models (SmolLM2: 576 wide) do not divide by the usual 128."""
    size = largest
    while size >= 32:
        if all(width % size == 0 for width in widths):
            return size
        size //= 2
    raise ValueError(f"no group size of 32 or more divides every layer width {sorted(set(widths))}")


def llmcompressor_scheme(method: str, bits: int, group: int) -> dict[str, Any]:
    """A compressed-tensors scheme: weights `bits` wide in groups of `group` inputs,
    activations 16-bit (W4A16 / W8A16). AWQ's scales are meant for asymmetric
    (zero-point) weights, GPTQ's for symmetric ones, as in the library's presets."""
    if bits not in (4, 8):
        raise ValueError(f"weight-only GPTQ/AWQ here is 4 or 8 bits, got {bits}")
    weights = {"num_bits": bits, "type": "int", "symmetric": method == "gptq", "strategy": "group", "group_size": group}
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def quantize_llmcompressor(
    variant: str,
    method: str,
    calibration_text: str,
    *,
    bits: int = 4,
    samples: int = 128,
    length: int = 512,
    step: Step | None = None,
) -> str:
    """GPTQ or AWQ of HF variant `variant`, registered as `<variant>-<method>-w<bits>`."""
    entry = _hf_variant(variant, method)
    require(method)
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve(variant)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    params = int(sum(p.numel() for p in model.parameters()))
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    group = group_size([m.in_features for m in linears])
    scheme = llmcompressor_scheme(method, bits, group)
    windows = calibration(tokenizer, calibration_text, samples, length)
    data = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})
    if method == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        recipe: Any = GPTQModifier(config_groups=scheme, ignore=["lm_head"])
    else:
        from llmcompressor.modifiers.awq import AWQModifier

        recipe = AWQModifier(config_groups=scheme, ignore=["lm_head"])
    if step:
        step(f"{method} int{bits}, groups of {group}, on {len(windows)} windows of {length} tokens, {device}")
    oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=length, num_calibration_samples=len(windows))
    name = f"{variant}-{method}-w{bits}"
    out = cache_dir() / name
    if step:
        step("saving compressed-tensors safetensors")
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    provenance = (
        f"llmcompressor {method.upper()} (int{bits} weights in groups of {group}, bf16 activations, lm_head kept) of "
        f"{variant}, calibrated on {len(windows)} windows "
        f"of {length} tokens of WikiText-2 validation, on {device}"
    )
    return register(_entry(name, entry, method, out, params, provenance, engines=("vllm", "transformers")))


def exl2_command(src: Path, work: Path, out: Path, bits: float, head_bits: int = 6) -> list[str]:
    """exllamav2's converter as a command line. Without `-c` it calibrates on the
    data shipped inside the exllamav2 package, so it needs no network."""
    return [
        sys.executable, "-m", "exllamav2.conversion.convert_exl2",
        "-i", str(src), "-o", str(work), "-cf", str(out), "-b", str(bits), "-hb", str(head_bits), "-nr",
    ]  # fmt: skip


def quantize_exl2(variant: str, bits: float = 4.0, step: Step | None = None) -> str:
    """EXL2 at `bits` bits per weight (a mix exllamav2 chooses by measuring each
    layer's error), registered as `<variant>-exl2-<bits>bpw`."""
    entry = _hf_variant(variant, "exl2")
    require("exl2")
    import torch

    if not torch.cuda.is_available():
        raise RecipeUnavailable("exllamav2's converter needs a CUDA device; none is visible here")
    name = f"{variant}-exl2-{bits:g}bpw"
    out, work = cache_dir() / name, cache_dir() / f"{name}.work"
    if step:
        step(f"exllamav2 measuring and quantizing to {bits:g} bits per weight")
    done = subprocess.run(exl2_command(resolve(variant), work, out, bits), capture_output=True, text=True)
    if done.returncode:  # the converter's own last words say why (a failed kernel build, a bad tensor)
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise RuntimeError(f"exllamav2's converter exited with {done.returncode}:\n{tail}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(out))
    weights = weights_file(out)
    params = _approx_params(config)
    provenance = f"exllamav2's converter at {bits:g} bits per weight (head 6 bits) from {variant}, its own calibration"
    record = _entry(name, entry, "exl2", out, params, provenance, engines=("exllamav2",))
    record.update(format="exl2", size_bytes=weights.stat().st_size, sha256=sha256_of(weights))
    return register(record)


def _approx_params(config: Any) -> int:
    """Parameters of a Llama-style decoder from its config (EXL2 packs weights, so
    counting tensor elements would not give the model's size)."""
    h, inter, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or h // heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    embeddings = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    norms = 2 * h * layers + h
    return int(layers * (attention + 3 * h * inter) + embeddings + norms)
