"""The shared-system-prompt figure of benchmarks/prefix_cache.py once more, with GuideLLM
as the load client, so it does not rest on our own client alone: GuideLLM's synthetic
chat requests, one ~1,000-token system prompt shared by all (`prefix_tokens`,
`prefix_count=1`), ~32-token user turns, 128-token answers, 8 concurrent streams.

llama-server in its best set-up (as in prefix_cache.py) and Lightgate's defaults, one
after the other in one run; `--variant` puts both on another GGUF of SmolLM2 (a
`models build-gguf` one), `--flash-attn-off` adds each without flash attention
(llama-server `-fa off`, Lightgate `flash_attn: false`), ratios then to the better
llama-server figure; `--baseline CHECKOUT` adds Lightgate's same set-ups on an earlier
checkout's code (a git worktree), and `--servers` keeps only the named Lightgate
ones. `--warm` first sends each server the same load with other prompts (another
seed: another shared prefix too), unmeasured: a server that has served a while, its
prompt store full and its memory touched, meets a new system prompt. Cold, a run of 24
requests is much of it warm-up: in this VM memory not touched lately costs ~10 ms a MB
on first touch, and the store's first saves (30 MB each here) fall in the second wave.
The table has TTFT's mean beside its p50, as a p50 over 24 requests says which wave
it fell in. `--nice 19` runs GuideLLM at the lowest priority, as
benchmarks/batching_guidellm.py can: on these 2 cores its per-token work otherwise
takes CPU from whichever server it measures. GuideLLM is not a project dependency (torch, transformers):
give its executable. Its tokenizer is the Hugging Face export of SmolLM2 (`lightgate
models export-hf smollm2-135m-instruct-q4_1` first, half a minute).

    .venv/bin/python -m benchmarks.prefix_cache_guidellm --guidellm /tmp/gvenv/bin/guidellm \\
        --llama-server .cache/llama-server/bin/llama-server
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import baseline_env, guidellm, print_table, save_json
from benchmarks.prefix_cache import MODEL, VARIANT, lightgate, peer_command
from compressed_models.catalog import resolve
from leanhttp.local import server_process

TOKENIZER = "smollm2-135m-instruct-bf16-from-q4_1"  # the same vocabulary as a Hugging Face folder
DATA = "kind=synthetic_text,prompt_tokens=32,output_tokens=128,prefix_tokens=1000,prefix_count=1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guidellm", required=True)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--variant", default=VARIANT, help="another GGUF of SmolLM2-135M, for both servers")
    parser.add_argument("--flash-attn-off", action="store_true", help="each server once more without flash attention")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="an earlier checkout, as Lightgate@baseline")
    parser.add_argument("--servers", nargs="*", help="only these Lightgate set-ups (default: every one)")
    parser.add_argument(
        "--warm", action="store_true", help="first one unmeasured run of other prompts (another seed) on each server"
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="GuideLLM's niceness, on the servers' cores (19: it yields to them)"
    )
    parser.add_argument("--out", default="bench-results/prefix_cache_guidellm.json")
    parser.add_argument("--figure", help="a PNG of each server's TTFT p50 by wave (default: none)")
    args = parser.parse_args()
    tokenizer = str(resolve(TOKENIZER))
    exe, variant = args.llama_server, args.variant
    servers: list[tuple[str, list[str], int, str, dict[str, str]]] = [
        ("llama-server (best)", *peer_command(exe, variant), "/health", {})
    ]
    if args.flash_attn_off:
        servers += [("llama-server (best), -fa off", *peer_command(exe, variant, "off"), "/health", {})]
    setups: list[tuple[str, dict[str, object]]] = [("Lightgate", {})]
    if args.flash_attn_off:
        setups += [("Lightgate, flash_attn off", {"flash_attn": False})]
    for suffix, env in [("", {}), *([("@baseline", baseline_env(args.baseline))] if args.baseline else [])]:
        for name, options in setups:
            if not args.servers or name + suffix in args.servers:
                servers += [(name + suffix, *lightgate(variant, options), "/ready", env)]
    results: dict[str, dict[str, float]] = {}
    for name, cmd, p, ready, env in servers:
        with server_process(cmd, p, ready, env) as (base, _pid):
            if args.warm:
                guidellm(args.guidellm, tokenizer, base, MODEL, DATA, 8, args.requests, args.nice, seed=7)
            results[name] = guidellm(args.guidellm, tokenizer, base, MODEL, DATA, 8, args.requests, args.nice)
            print(name, results[name], flush=True)
    peers = [r for name, r in results.items() if name.startswith("llama-server")]
    best_ttft = min(r["ttft_p50_ms"] for r in peers)
    best_mean = min(r["ttft_mean_ms"] for r in peers)
    best_tps = max(r["output_tokens_per_s"] for r in peers)
    rows = [
        [
            name,
            str(int(r["requests"])),
            f"{r['ttft_p50_ms']:.0f} ({r['ttft_p50_ms'] / best_ttft:.2f})",
            f"{r['ttft_mean_ms']:.0f} ({r['ttft_mean_ms'] / best_mean:.2f})",
            f"{r['ttft_p99_ms']:.0f}",
            f"{r['output_tokens_per_s']:.1f} ({r['output_tokens_per_s'] / best_tps:.2f})",
            " / ".join(f"{v:.0f}" for k, v in r.items() if k.startswith("ttft_p50_ms_wave_")),
        ]
        for name, r in results.items()
    ]
    heads = ["server", "requests", "TTFT p50 ms (to best peer)", "TTFT mean ms (to best peer)", "TTFT p99 ms"]
    heads += ["output tok/s (to best peer)"]
    heads += ["TTFT p50 ms by wave of 8 (GuideLLM's start order)"]
    print_table(heads, rows)
    save_json(args.out, results)
    if args.figure:
        title = f"GuideLLM, 24 shared-prompt requests at 8 streams, {variant}" + (", warmed" if args.warm else "")
        Path(args.figure).write_bytes(plot(results, title))


def plot(results: dict[str, dict[str, float]], title: str) -> bytes:
    """Each server's TTFT p50 by wave of 8, and over all 24, on a log scale (a cold
    llama-server's first wave is ten times the rest)."""
    from loadtest.plots import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    keys = sorted((k for k in next(iter(results.values())) if k.startswith("ttft_p50_ms_wave_")), key=len)
    labels = [f"wave {k.rsplit('_', 1)[1]}" for k in keys] + ["all (p50)"]
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        xs = [x + (i - (len(results) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, [r[k] for k in keys] + [r["ttft_p50_ms"]], width, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("TTFT p50, ms")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return png(fig)


if __name__ == "__main__":
    main()
