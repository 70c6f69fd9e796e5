"""vLLM's own speculative decoding through Lightgate's `vllm` backend, against the
same backend without it: `speculative_config` passes through the model's options
to vLLM's engine arguments like any other.

    python benchmarks/vllm_speculative.py --vllm-python .venv-vllm/bin/python \\
        --target QWEN_1.5B_HF_DIR --draft QWEN_0.5B_HF_DIR [--rounds 3]

One `lightgate serve` per configuration (run by the vLLM venv's Python), started
in turn each round; greedy requests of 128 tokens on the two workloads of
benchmarks/speculative.py, one at a time; medians of output tokens/s."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import lightgate_config
from benchmarks.speculative import one
from leanhttp.local import free_port, server

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "HF_HUB_OFFLINE": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-python", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench-results/vllm-speculative.json"))
    args = parser.parse_args()
    base = {"max_model_len": 1024, "dtype": "bfloat16", "max_num_seqs": 4}
    speculative = {"model": args.draft, "num_speculative_tokens": args.gamma}
    configs = {
        "vllm backend": base,
        f"vllm backend + draft model, γ={args.gamma}": {**base, "speculative_config": speculative},
    }
    rates: dict[tuple[str, str], list[float]] = {}
    console = Console()
    for round_ in range(args.rounds):
        for name, options in configs.items():
            port = free_port()
            config = lightgate_config([{"name": "m", "backend": "vllm", "path": args.target, "options": options}])
            cmd = [args.vllm_python, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
            status = console.status(f"round {round_ + 1}: {name}")
            with status, server(cmd, port, "/ready", CPU_ENV) as url, httpx.Client(base_url=url, timeout=900) as client:
                one(client, "m", "text", 8)  # warm-up
                for workload in ("text", "code edit"):
                    n, seconds, _ = one(client, "m", workload, args.tokens)
                    rates.setdefault((name, workload), []).append(n / seconds)
    rows: list[dict[str, Any]] = []
    for (name, workload), measured in rates.items():
        plain = statistics.median(rates[("vllm backend", workload)])
        rate = statistics.median(measured)
        rows.append({"config": name, "workload": workload, "tok_s": rate, "speedup": rate / plain, "rounds": measured})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("\n| configuration | workload | tok/s | vs without |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['workload']} | {r['tok_s']:.1f} | {r['speedup']:.2f} |")


if __name__ == "__main__":
    main()
