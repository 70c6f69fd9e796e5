"""The survey's Table 3 for the variants that run here: weight memory, running
memory, single-stream tokens/s and WikiText-2 perplexity per variant, with plots
of perplexity and tokens/s against bits per weight.

    python benchmarks/table3.py VARIANT... [--rounds 3] [--tokens 128]

Each measurement is a fresh process (`--one VARIANT`), so running memory is that
variant's alone: the process's peak RSS after loading the weights, prefilling a
fixed 128-token WikiText-2 prompt and decoding `--tokens` tokens greedily (EOS
ignored). GGUF variants run on llama.cpp through Lightgate's engine (2 threads,
one sequence), Hugging Face ones on PyTorch in the dtype they are stored in; both
are the engines' plain decoding loops, no server. Rounds interleave the variants
(this machine's speed drifts) and the table shows medians. Perplexity is read
from `lightgate eval ppl` results (compressed_models/results.py), not measured
here: a full WikiText-2 pass takes minutes per variant. Every row shows the result
over the same number of chunks (`--ppl-chunks`), so the rows are comparable."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from compressed_models import catalog, results
from loadtest.prompts import WIKITEXT

PROMPT_TOKENS = 128


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _prompt_text() -> str:
    return " ".join(WIKITEXT.read_text(encoding="utf-8").split()[200:600])


def measure_gguf(path: Path, tokens: int) -> dict[str, float]:
    import numpy as np

    from backends.llamacpp.engine import EngineConfig, LlamaEngine

    runtime = _rss_mb()
    engine = LlamaEngine(EngineConfig(str(path), 1024, 512, 1, 2, 2, 0, True, None, False))
    prompt = engine.tokenize(_prompt_text())[:PROMPT_TOKENS]
    started = time.perf_counter()
    last = [i == len(prompt) - 1 for i in range(len(prompt))]
    engine.decode(prompt, list(range(len(prompt))), [0] * len(prompt), last)
    token = int(np.argmax(engine.logits(len(prompt) - 1)))
    first = time.perf_counter()
    for position in range(len(prompt), len(prompt) + tokens - 1):
        engine.decode([token], [position], [0], [True])
        token = int(np.argmax(engine.logits(0)))
    end = time.perf_counter()
    return {"runtime_mb": runtime, "prefill_s": first - started, "decode_tok_s": (tokens - 1) / (end - first)}


def measure_hf(path: Path, tokens: int) -> dict[str, float]:
    import torch

    from backends.transformers.model import load_causal_lm

    runtime = _rss_mb()
    model, tokenizer = load_causal_lm(path, "bfloat16")
    ids = torch.tensor([tokenizer(_prompt_text())["input_ids"][:PROMPT_TOKENS]])
    with torch.no_grad():
        started = time.perf_counter()
        out = model(ids, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        cache = out.past_key_values
        first = time.perf_counter()
        for _ in range(tokens - 1):
            out = model(token, past_key_values=cache, use_cache=True)
            token, cache = out.logits[:, -1].argmax(-1, keepdim=True), out.past_key_values
        end = time.perf_counter()
    return {"runtime_mb": runtime, "prefill_s": first - started, "decode_tok_s": (tokens - 1) / (end - first)}


def one(variant: str, tokens: int) -> dict[str, Any]:
    """Measure `variant` in this process; its peak RSS is the running memory."""
    entry = catalog.manifest(variant)
    path = catalog.resolve(variant)
    engine = "llama.cpp" if entry["format"] == "gguf" else "PyTorch"
    figures = measure_gguf(path, tokens) if engine == "llama.cpp" else measure_hf(path, tokens)
    return {
        "variant": variant,
        "engine": engine,
        "method": entry["method"],
        "bits_per_weight": entry.get("bits_per_weight"),
        "weights_mb": catalog.weights_file(path).stat().st_size / 1e6,
        "running_mb": _rss_mb(),
        **figures,
    }


def run(variants: list[str], rounds: int, tokens: int, chunks: int) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with Progress() as progress:
        task = progress.add_task("Table 3", total=rounds * len(variants))
        for _ in range(rounds):
            for variant in variants:
                progress.update(task, description=variant)
                cmd = [sys.executable, __file__, "--one", variant, "--tokens", str(tokens)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
                progress.advance(task)
    rows = []
    for variant, measured in runs.items():
        row = dict(measured[0])
        for key in ("running_mb", "runtime_mb", "prefill_s", "decode_tok_s"):
            row[key] = statistics.median(m[key] for m in measured)
        # The same slice of WikiText-2 for every row: results over `chunks` chunks of 512.
        kept = [r for r in results.load(variant).values() if r.get("protocol") == "llamacpp" and r.get("n_ctx") == 512]
        same = [r for r in kept if r.get("chunks") == chunks]
        row["ppl"], row["ppl_tokens"] = (same[0]["ppl"], same[0]["tokens"]) if same else (None, 0)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | engine | bits/weight | weight memory | running memory | prefill 128 tok | decode tok/s | "
        "perplexity (tokens scored) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ppl = f"{r['ppl']:.2f} ({r['ppl_tokens']:,})" if r["ppl"] is not None else "-"
        lines.append(
            f"| {r['variant']} | {r['engine']} | {r['bits_per_weight']} | {r['weights_mb']:.0f} MB | "
            f"{r['running_mb']:.0f} MB | {r['prefill_s'] * 1000:.0f} ms | {r['decode_tok_s']:.1f} | {ppl} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    from loadtest.plots import png, pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for engine, marker in (("llama.cpp", "o"), ("PyTorch", "s")):
        mine = [r for r in rows if r["engine"] == engine]
        scored = [r for r in mine if r["ppl"] is not None]
        for ax, key, points in ((left, "ppl", scored), (right, "decode_tok_s", mine)):
            ax.scatter([r["bits_per_weight"] for r in points], [r[key] for r in points], marker=marker, label=engine)
            for r in points:
                xy = (r["bits_per_weight"], r[key])
                ax.annotate(str(r["method"]), xy, fontsize=7, xytext=(3, 3), textcoords="offset points")
    left.set(xlabel="bits per weight (file)", ylabel="WikiText-2 perplexity (llama.cpp protocol)", yscale="log")
    right.set(xlabel="bits per weight (file)", ylabel="single-stream decode tokens/s (2 threads)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    out.write_bytes(png(fig))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per measurement")
    parser.add_argument(
        "--ppl-chunks", type=int, default=40, help="the eval ppl results to show: over this many 512-token chunks"
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results/table3.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/figures/table3.png"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.tokens)))
        return 0
    rows = run(args.variants, args.rounds, args.tokens, args.ppl_chunks)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.plot)
    Console().print(markdown(rows))
    print(f"\nwrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
