"""`lightgate eval ppl VARIANT`: perplexity by llama.cpp's or GPTQ's protocol on
WikiText-2's test text, from the engine's logits or through a server (`--base-url`,
`--model`). The result is kept for `lightgate bench compare` (compressed_models/results.py)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from compressed_models import catalog, perplexity, results
from compressed_models.datasets import WIKITEXT


def add_parser(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate compressed variants").add_subparsers(dest="eval_command", required=True)
    p = ev.add_parser("ppl", help="perplexity on WikiText-2 by llama.cpp's or GPTQ's protocol")
    p.add_argument(
        "variant",
        help="a catalog variant (GGUF: llama.cpp's logits; Hugging Face: PyTorch's), or a label with --base-url",
    )
    p.add_argument("--text", type=Path, default=WIKITEXT, help="the text (default: WikiText-2 test)")
    p.add_argument(
        "--protocol",
        choices=["llamacpp", "gptq"],
        default="llamacpp",
        help="llamacpp: 512-token chunks, BOS each, second halves scored; gptq: rows joined by blank lines, "
        "2048-token windows, every token scored",
    )
    p.add_argument("--ctx", type=int, help="chunk length in tokens (default: 512 for llamacpp, 2048 for gptq)")
    p.add_argument("--max-chunks", type=int, help="score only the first chunks (quick runs)")
    p.add_argument("--threads", type=int, default=0)
    kv = "GGUF on the engine: the KV cache's {} type (f16, q8_0, q4_0, ...: llama-perplexity's -ct{})"
    p.add_argument("--cache-type-k", default="f16", help=kv.format("K", "k"))
    p.add_argument("--cache-type-v", default="f16", help=kv.format("V", "v"))
    p.add_argument(
        "--flash-attn",
        choices=("auto", "on", "off"),
        default="auto",
        help="flash attention, as llama-perplexity's -fa (auto: llama.cpp's choice, on for a CPU)",
    )
    p.add_argument("--base-url", help="score through this OpenAI-compatible server instead of the engine")
    p.add_argument("--model", help="the server's model name (with --base-url)")
    p.add_argument("--out", type=Path, help="results JSON (default: bench-results/ppl-<variant>-<protocol>.json)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = Console()
    types = (args.cache_type_k, args.cache_type_v)
    flash_attn = {"auto": None, "on": True, "off": False}[args.flash_attn]
    if types != ("f16", "f16") or flash_attn is not None:
        # Only the GGUF engine path sets these: a server or PyTorch would ignore them.
        if args.base_url or catalog.manifest(args.variant)["format"] == "hf-safetensors":
            console.print(
                "[red]--cache-type-k/-v and --flash-attn apply to a GGUF variant scored on the engine only[/red]"
            )
            return 2
        from backends.llamacpp.engine import CACHE_TYPES  # the engine's own list of names

        if unknown := [t for t in types if t not in CACHE_TYPES]:
            console.print(f"[red]unknown cache type {unknown[0]!r}: one of {', '.join(CACHE_TYPES)}[/red]")
            return 2
        if args.cache_type_v not in ("f16", "f32") and flash_attn is False:  # as the backend refuses it
            console.print("[red]a quantized --cache-type-v needs flash attention (--flash-attn off was given)[/red]")
            return 2
    text = args.text.read_text(encoding="utf-8")
    protocol = perplexity.Protocol.of(args.protocol, args.ctx)
    with Progress(console=console) as progress:
        task = progress.add_task(f"perplexity of {args.variant}", total=None)

        def step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        started = time.perf_counter()
        if args.base_url:
            result = perplexity.with_server(
                args.base_url, args.model or args.variant, text, protocol, args.max_chunks, step
            )
            where = args.base_url
        elif catalog.manifest(args.variant)["format"] == "hf-safetensors":
            from compressed_models import hf  # torch and transformers: only for these variants

            folder = catalog.resolve(args.variant)
            result = hf.perplexity_with_transformers(folder, text, protocol, args.max_chunks, step)
            where = f"transformers: {folder}"
        else:
            path = str(catalog.resolve(args.variant))
            result = perplexity.with_engine(
                path, text, protocol, args.max_chunks, args.threads, step, types, flash_attn
            )
            where = path
    seconds = time.perf_counter() - started
    console.print(
        f"{args.variant}: perplexity {result.ppl:.4f} over {result.tokens_scored} tokens "
        f"({result.chunks} chunks of {result.n_ctx}), {seconds:.0f} s"
    )
    kv = (
        ""
        if (args.cache_type_k, args.cache_type_v) == ("f16", "f16")
        else f"-kv-{args.cache_type_k}-{args.cache_type_v}"
    ) + ("" if flash_attn is None else f"-fa-{args.flash_attn}")
    out = args.out or Path("bench-results") / f"ppl-{args.variant}-{protocol.name}{kv}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"variant": args.variant, "where": where, "text": str(args.text), "ppl": result.ppl, "seconds": seconds}
    record.update(protocol=result.protocol, n_ctx=result.n_ctx, chunks=result.chunks, tokens=result.tokens_scored)
    record.update(cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v, flash_attn=args.flash_attn)
    out.write_text(json.dumps(record, indent=2))
    if kv:  # the variant's own figure (bench compare's) is with the default f16 cache and flash attention
        console.print(f"wrote {out}")
        return 0
    kept = results.save(args.variant, record)
    console.print(f"wrote {out} (kept for bench compare in {kept})")
    return 0
