"""Does `lightgate bench run` measure what GuideLLM measures? Both load the same
server the same way (N concurrent streams, all started at once, the same request
count and output length) and report TTFT and inter-token latency; the server is
Lightgate's synthetic backend with a fixed 50 ms to the first token and 10 ms
between tokens, so both should also agree with that. Rounds alternate the two
tools; medians over rounds.

GuideLLM is not a project dependency (it needs torch, transformers, datasets and
a Hugging Face tokenizer folder for its synthetic prompts): give its executable
and a tokenizer folder, e.g. from `lightgate models export-hf`.

    .venv/bin/python benchmarks/loadtest_vs_guidellm.py --guidellm /tmp/venv/bin/guidellm \\
        --tokenizer /tmp/smollm2-hf [--users 8] [--requests 64] [--tokens 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import guidellm, lightgate_config, print_table, save_json
from leanhttp.local import free_port, server

BIN = Path(sys.executable).parent
# About 16 SmolLM2 tokens, as GuideLLM's prompts below: the synthetic backend counts bytes.
PROMPT = "The history of the city begins with a small village on the river, long before the bridge."


def lightgate(base: str, args: argparse.Namespace) -> dict[str, float]:
    out = Path(tempfile.mkdtemp())
    cmd = [str(BIN / "lightgate"), "bench", "run", "--base-url", base, "--model", "timed", "--prompt", PROMPT]
    cmd += ["--users", str(args.users), "--requests", str(args.requests), "--max-tokens", str(args.tokens)]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    s = json.loads((out / "run.json").read_text())["summary"]
    # GuideLLM's inter-token latency is a request's (last - first token) / (tokens - 1),
    # which is our TPOT; our ITL distribution is over every gap.
    return {
        "ttft_median_ms": s["ttft"]["median"] * 1000,
        "ttft_mean_ms": s["ttft"]["mean"] * 1000,
        "itl_median_ms": s["tpot"]["median"] * 1000,
        "itl_mean_ms": s["tpot"]["mean"] * 1000,
        "requests": s["requests"] - s["failed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guidellm", required=True, help="the guidellm executable")
    parser.add_argument("--tokenizer", required=True, help="a Hugging Face tokenizer folder for GuideLLM")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench-results/loadtest_vs_guidellm.json")
    args = parser.parse_args()
    model = {"name": "timed", "backend": "synthetic", "options": {"ttft_ms": 50, "itl_ms": 10}, "max_queue": 1024}
    config = lightgate_config([model])
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    runs: dict[str, list[dict[str, float]]] = {"lightgate bench run": [], "GuideLLM (peer)": []}
    with server(cmd, port, "/ready", {"LIGHTGATE_ACCESS_LOG": "false"}) as base:
        for _ in range(args.rounds):
            runs["lightgate bench run"].append(lightgate(base, args))
            data = f"kind=synthetic_text,prompt_tokens=16,output_tokens={args.tokens}"
            g = guidellm(args.guidellm, args.tokenizer, base, "timed", data, args.users, args.requests)
            runs["GuideLLM (peer)"].append(
                {
                    "ttft_median_ms": g["ttft_p50_ms"],
                    "ttft_mean_ms": g["ttft_mean_ms"],
                    "itl_median_ms": g["itl_p50_ms"],
                    "itl_mean_ms": g["itl_mean_ms"],
                    "requests": g["requests"],
                }
            )
    keys = ["ttft_median_ms", "ttft_mean_ms", "itl_median_ms", "itl_mean_ms"]
    medians = {tool: {k: statistics.median(r[k] for r in rs) for k in keys} for tool, rs in runs.items()}
    ours, peer = medians["lightgate bench run"], medians["GuideLLM (peer)"]
    ratio = {k: ours[k] / peer[k] for k in keys}
    save_json(args.out, {"runs": runs, "medians": medians, "ratio": ratio})
    print(f"\nsynthetic backend (TTFT 50 ms, 10 ms per token); {args.users} streams, {args.requests} requests")
    print(f"of {args.tokens} tokens; medians of {args.rounds} rounds\n")
    header = ["tool", "TTFT median ms", "TTFT mean ms", "ITL median ms", "ITL mean ms"]
    rows = [[tool, *(f"{m[k]:.1f}" for k in keys)] for tool, m in medians.items()]
    rows.append(["ratio", *(f"{ratio[k]:.3f}" for k in keys)])
    print_table(header, rows)


if __name__ == "__main__":
    main()
