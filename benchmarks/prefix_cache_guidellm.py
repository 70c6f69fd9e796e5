"""The shared-system-prompt figure of benchmarks/prefix_cache.py once more, with GuideLLM
as the load client, so it does not rest on our own client alone: GuideLLM's synthetic
chat requests, one ~1,000-token system prompt shared by all (`prefix_tokens`,
`prefix_count=1`), ~32-token user turns, 128-token answers, 8 concurrent streams.

llama-server in its best set-up (as in prefix_cache.py) and Lightgate's defaults, one
after the other in one run. GuideLLM is not a project dependency (torch, transformers):
give its executable, and a tokenizer folder (the catalog's Hugging Face export of
SmolLM2 has one).

    .venv/bin/python -m benchmarks.prefix_cache_guidellm --guidellm /tmp/gvenv/bin/guidellm \\
        --llama-server .cache/llama-server/bin/llama-server
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.common import guidellm, lightgate_config, print_table, save_json
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server_process

VARIANT = "smollm2-135m-instruct-q4_1"
TOKENIZER = "smollm2-135m-instruct-bf16-from-q4_1"  # the same vocabulary as a Hugging Face folder
MODEL = "smollm2-135m"
DATA = "kind=synthetic_text,prompt_tokens=32,output_tokens=128,prefix_tokens=1000,prefix_count=1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guidellm", required=True)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--out", default="bench-results/prefix_cache_guidellm.json")
    args = parser.parse_args()
    tokenizer = str(resolve(TOKENIZER))
    gguf = str(resolve(VARIANT))
    port = free_port()
    peer = [args.llama_server, "-m", gguf, "--port", str(port), "-np", "8", "-c", str(8 * 2048), "-t", "2"]
    peer += ["--kv-unified", "--cache-ram", "4096", "--cache-reuse", "256", "--jinja"]
    lg_port = free_port()
    model = {"name": MODEL, "backend": "llamacpp", "variant": VARIANT, "options": {"n_ctx": 2048}}
    config = lightgate_config([{**model, "max_queue_wait_s": 600}])
    ours = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(lg_port)]
    results: dict[str, dict[str, float]] = {}
    for name, cmd, p, ready in [("llama-server (best)", peer, port, "/health"), ("Lightgate", ours, lg_port, "/ready")]:
        with server_process(cmd, p, ready) as (base, _pid):
            results[name] = guidellm(args.guidellm, tokenizer, base, MODEL, DATA, 8, args.requests)
            print(name, results[name], flush=True)
    peer_r = results["llama-server (best)"]
    rows = [
        [
            name,
            str(int(r["requests"])),
            f"{r['ttft_p50_ms']:.0f} ({r['ttft_p50_ms'] / peer_r['ttft_p50_ms']:.2f})",
            f"{r['ttft_p99_ms']:.0f}",
            f"{r['output_tokens_per_s']:.1f} ({r['output_tokens_per_s'] / peer_r['output_tokens_per_s']:.2f})",
        ]
        for name, r in results.items()
    ]
    print_table(["server", "requests", "TTFT p50 ms (to peer)", "TTFT p99 ms", "output tok/s (to peer)"], rows)
    save_json(args.out, results)


if __name__ == "__main__":
    main()
