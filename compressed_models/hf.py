"""Variants in Hugging Face format (safetensors + tokenizer), the format vLLM,
TensorRT-LLM, ExLlamaV2's converter and the PyTorch baseline load. Needs the `hf`
extra (torch, transformers, gguf, accelerate); imported only by the commands
that use it.

- `export_hf`: a GGUF variant dequantized by transformers, saved in bf16. The
  packaged models are quantized, so the export keeps their quantization error:
  it is the base the other HF variants start from, not the original weights.
- `prune_wanda_sp`: structured pruning of each layer's MLP channels, Wanda-SP
  style (An et al., 2024): channel j of `down_proj`'s input scores
  sum_i |W_ij| * ||X_j||_2 over calibration text (WikiText-2 validation), and
  the lowest-scoring fraction is cut from gate/up (rows) and down (columns).
  Attention heads stay: the models here share few KV heads (SmolLM2: 3), so head
  pruning comes only in steps of a third. The same count is cut in every layer,
  so the result is a standard config that any engine loads.
- `quantize_quanto`: weight-only int8 / int4 of every linear layer but the output
  head, through optimum-quanto (weights stored quantized, activations in bf16).
  Only PyTorch loads the result (backends/transformers/model.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends.transformers.model import is_quanto, load_causal_lm
from compressed_models.catalog import cache_dir, manifest, register, resolve, sha256_of
from compressed_models.perplexity import Perplexity, Protocol, score

Step = Callable[[str], None]


QUANTO_WEIGHTS = ("int8", "int4")


def _load(folder: Path) -> tuple[Any, Any]:
    return load_causal_lm(folder, "float32")


def _save(model: Any, tokenizer: Any, out: Path) -> None:
    import torch

    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _entry(
    name: str,
    base: dict[str, Any],
    method: str,
    folder: Path,
    params: int,
    provenance: str,
    engines: tuple[str, ...] = ("transformers", "vllm", "tensorrt_llm"),
) -> dict[str, Any]:
    weights = folder / "model.safetensors"
    return {
        "name": name,
        "base_model": base["base_model"],
        "method": method,
        "bits_per_weight": round(weights.stat().st_size * 8 / params, 2),
        "format": "hf-safetensors",
        "engines": list(engines),
        "source": {"path": str(folder)},
        "size_bytes": weights.stat().st_size,
        "sha256": sha256_of(weights),
        "licence": base["licence"],
        "provenance": provenance,
    }


def export_hf(variant: str, step: Step | None = None) -> str:
    """GGUF catalog variant -> HF folder in bf16, registered as `<stem>-bf16-from-<method>`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = manifest(variant)
    if entry["format"] != "gguf":
        raise ValueError(f"export-hf starts from a GGUF variant; {variant!r} is {entry['format']}")
    gguf = resolve(variant)
    method = str(entry["method"]).lower()
    name = f"{variant.removesuffix('-' + method)}-bf16-from-{method}"
    out = cache_dir() / name
    if step:
        step("dequantizing the GGUF")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it carries the GGUF
    # quantization config: move its weights to a fresh model of the cleaned config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = type(loaded)(config)
    clean.load_state_dict(loaded.state_dict())
    if step:
        step("saving safetensors")
    _save(clean, AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), out)
    provenance = (
        f"transformers' GGUF loader dequantized the catalog variant {variant} ({entry['method']}), saved in bf16"
    )
    return register(_entry(name, entry, "bf16", out, _params(clean), provenance))


def _params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _hf_variant(variant: str, command: str) -> dict[str, Any]:
    entry = manifest(variant)
    if entry["format"] != "hf-safetensors" or is_quanto(resolve(variant)):
        raise ValueError(f"{command} starts from a Hugging Face bf16 variant (models export-hf); {variant!r} is not")
    return entry


def quantize_quanto(variant: str, weights: str, step: Step | None = None) -> str:
    """Weight-only `weights` (int8 or int4) quantization of HF variant `variant`, by
    optimum-quanto, registered as `<variant>-quanto-<weights>`."""
    import torch
    from optimum.quanto import QuantizedModelForCausalLM, qint4, qint8

    if weights not in QUANTO_WEIGHTS:
        raise ValueError(f"quanto weights are one of {', '.join(QUANTO_WEIGHTS)}, got {weights!r}")
    entry = _hf_variant(variant, "quantize-torch")
    folder = resolve(variant)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    params = _params(model)
    if step:
        step(f"quantizing linear weights to {weights}")
    # The output head stays bf16: it is tied to the embedding in these models,
    # and quanto leaves embeddings alone anyway.
    qtype = {"int8": qint8, "int4": qint4}[weights]
    qmodel = QuantizedModelForCausalLM.quantize(model, weights=qtype, exclude="lm_head")
    name = f"{variant}-quanto-{weights}"
    out = cache_dir() / name
    if step:
        step("saving safetensors and quanto's map")
    qmodel.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(out)
    provenance = (
        f"optimum-quanto weight-only {weights} (per-channel, group size 128 for int4) of every linear layer of "
        f"{variant} but lm_head; activations bf16"
    )
    return register(_entry(name, entry, f"quanto-{weights}", out, params, provenance, engines=("transformers",)))


def calibration(tokenizer: Any, text: str, samples: int, length: int) -> list[list[int]]:
    """`samples` windows of `length` tokens, evenly spaced through the text."""
    ids: list[int] = tokenizer(text)["input_ids"]
    stride = max(length, (len(ids) - length) // max(1, samples))
    return [ids[i : i + length] for i in range(0, stride * samples, stride) if i + length <= len(ids)][:samples]


def channel_scores(model: Any, windows: list[list[int]]) -> list[Any]:
    """Wanda-SP scores of every layer's MLP channels: sum_i |W_down[i, j]| * ||X_j||_2."""
    import torch

    layers = model.model.layers
    sumsq = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]

    def hook(index: int) -> Callable[..., None]:
        def record(_module: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sumsq[index] += (x * x).sum(dim=0)

        return record

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for window in windows:
                model(torch.tensor([window]))
    finally:
        for handle in handles:
            handle.remove()
    return [
        layer.mlp.down_proj.weight.detach().double().abs().sum(dim=0) * sq.sqrt()
        for layer, sq in zip(layers, sumsq, strict=True)
    ]


def cut_mlp_channels(model: Any, keep: list[Any]) -> None:
    """Keep only the channels `keep[layer]` (index tensors of one length) of each MLP."""
    import torch

    for layer, idx in zip(model.model.layers, keep, strict=True):
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, len(idx), bias=old.bias is not None)
            new.weight.data = old.weight.data[idx].clone()
            if old.bias is not None:
                new.bias.data = old.bias.data[idx].clone()
            setattr(mlp, name, new)
        old = mlp.down_proj
        new = torch.nn.Linear(len(idx), old.out_features, bias=old.bias is not None)
        new.weight.data = old.weight.data[:, idx].clone()
        if old.bias is not None:
            new.bias.data = old.bias.data.clone()
        mlp.down_proj = new
    model.config.intermediate_size = len(keep[0])


def prune_wanda_sp(
    variant: str,
    sparsity: float,
    calibration_text: str,
    *,
    samples: int = 32,
    length: int = 256,
    step: Step | None = None,
) -> str:
    """Prune `sparsity` of every layer's MLP channels of HF variant `variant`."""
    import torch

    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity is a fraction between 0 and 1, got {sparsity}")
    entry = _hf_variant(variant, "prune")
    model, tokenizer = _load(resolve(variant))
    if step:
        step(f"calibrating on {samples} windows of {length} tokens")
    scores = channel_scores(model, calibration(tokenizer, calibration_text, samples, length))
    width = model.config.intermediate_size
    kept = width - round(width * sparsity)
    keep = [torch.sort(torch.topk(score, kept).indices).values for score in scores]
    if step:
        step(f"cutting {width - kept} of {width} MLP channels in each layer")
    cut_mlp_channels(model, keep)
    percent = round(sparsity * 100)
    name = f"{variant}-pruned-wanda-sp-{percent}"
    out = cache_dir() / name
    _save(model, tokenizer, out)
    provenance = (
        f"Wanda-SP structured pruning of {percent}% of each layer's MLP channels of {variant}, calibrated on "
        f"{samples} windows of {length} tokens of WikiText-2 validation; attention heads kept"
    )
    return register(_entry(name, entry, f"pruned-wanda-sp-{percent}", out, _params(model), provenance))


def perplexity_with_transformers(
    folder: Path,
    raw: str,
    protocol: Protocol,
    max_chunks: int | None = None,
    step: Callable[[int, int], None] | None = None,
) -> Perplexity:
    """A protocol over a Hugging Face folder's logits (PyTorch, float32): the engine-
    independent reference, and how HF variants are scored without a server."""
    import torch

    model, tokenizer = _load(folder)
    tokens: list[int] = tokenizer(protocol.text(raw))["input_ids"]
    bos = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
    if bos is not None and tokens[:1] != [bos]:
        tokens = [bos, *tokens]
    first = protocol.first_scored

    def scored_logprobs(chunk: list[int]) -> Any:
        with torch.no_grad():
            logits = model(torch.tensor([chunk])).logits[0].double()
        logprobs = torch.log_softmax(logits[first:-1], dim=-1)
        return logprobs.gather(1, torch.tensor(chunk[first + 1 :])[:, None])[:, 0].numpy()

    return score(protocol, tokens, bos, max_chunks, scored_logprobs, step)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the model's own tokenizer starts a text with BOS (as llama.cpp's add_bos)."""
    return bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token_id is not None
