"""What a gateway costs in front of a real upstream: llama.cpp's `llama-server -np 8`
(SmolLM2 Q4_1, both cores) reached directly, through Lightgate's `openai` backend,
and through LiteLLM's proxy, side by side on the same machine, in interleaved rounds.

Closed loop as in batching.py (C users, streaming completions of 128 tokens with
ignore_eos, back to back): output tokens/s and TTFT p50 per front and concurrency;
the report gives each gateway's throughput as a ratio of the upstream's and its
added TTFT p50 in ms.

    .venv/bin/python benchmarks/upstream.py --llama-server PATH --litellm PATH [--rounds 3]

`--llama-server` comes from benchmarks/build_llama_server.sh; `--litellm` is the
`litellm` command of a venv with `litellm[proxy]` (its own venv: it pins its own
dependencies). Without it, LiteLLM is skipped. `--baseline CHECKOUT` adds the
`openai` backend of another checkout (a git worktree of an earlier commit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.batching import Level, run_level
from benchmarks.common import baseline_env, lightgate_config, percentile
from compressed_models.catalog import resolve
from leanhttp.local import free_port, server

console = Console()
MODEL = "smollm2-135m-instruct-q4_1"


Front = tuple[list[str], int, str, dict[str, str]]  # command, port, readiness path, environment


def fronts(upstream: str, args: argparse.Namespace) -> dict[str, Front]:
    """name -> how to start each gateway in front of `upstream`, with its defaults
    (metrics and access log on, no client authentication)."""
    out: dict[str, Front] = {}
    port = free_port()
    config = lightgate_config([{"name": "m", "backend": "openai", "options": {"upstreams": [upstream]}}])
    out["lightgate"] = (
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
        port,
        "/ready",
        {},
    )
    if args.baseline:  # the same config on an earlier checkout's code
        port = free_port()
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
        out["lightgate@baseline"] = (cmd, port, "/ready", baseline_env(args.baseline))
    if args.litellm:
        port = free_port()
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # its packaged price list: no network at start
        cfg = Path(tempfile.mkdtemp()) / "litellm.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": "m",
                            "litellm_params": {"model": "openai/m", "api_base": upstream + "/v1", "api_key": "none"},
                        }
                    ],
                    # No client keys, as Lightgate here (LiteLLM refuses to start keyless otherwise).
                    "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
                }
            )
        )
        out["litellm"] = (
            [args.litellm, "--config", str(cfg), "--port", str(port), "--num_workers", "1"],
            port,
            "/health/liveliness",
            env,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", required=True, help="path of a llama-server binary (the upstream)")
    parser.add_argument("--litellm", help="the `litellm` command of a venv with litellm[proxy] (the peer)")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="another checkout of Lightgate (a git worktree of an earlier commit) run as lightgate@baseline",
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests-per-user", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench-results/upstream.json")
    args = parser.parse_args()

    slots = max(args.concurrency)
    model_path = str(resolve(MODEL))
    up_port = free_port()
    up_cmd = [args.llama_server, "-m", model_path, "--port", str(up_port), "-np", str(slots), "-c", str(512 * slots)]
    up_cmd += ["-t", str(args.threads), "-tb", str(args.threads), "--alias", "m"]
    levels: dict[tuple[str, int], list[Level]] = {}
    with ExitStack() as stack:
        upstream = stack.enter_context(server(up_cmd, up_port, "/health"))
        bases = {"direct": upstream}
        for name, (cmd, port, ready, env) in fronts(upstream, args).items():
            bases[name] = stack.enter_context(server(cmd, port, ready, env))
        for name, base in bases.items():  # warm every path once (connections, first-request costs)
            asyncio.run(run_level(base, "m", 1, 8, 120, tag=f"warm-up {name} "))
        with Progress(console=console) as progress:
            task = progress.add_task("rounds", total=args.rounds * len(bases) * len(args.concurrency))
            for round_ in range(args.rounds):
                for name, base in bases.items():  # interleaved: the machine's drift hits each front alike
                    for c in args.concurrency:
                        level = asyncio.run(
                            run_level(
                                base,
                                "m",
                                c,
                                args.tokens,
                                120,
                                tag=f"r{round_} {name} ",
                                requests=c * args.requests_per_user,
                            )
                        )
                        levels.setdefault((name, c), []).append(level)
                        progress.advance(task)
    results = [_summary(name, c, rounds) for (name, c), rounds in levels.items()]
    direct = {r["concurrency"]: r for r in results if r["front"] == "direct"}
    for r in results:
        peer = direct[r["concurrency"]]
        r["tok_s_ratio"] = r["output_tok_s"] / peer["output_tok_s"]
        r["ttft_added_ms"] = r["ttft_ms_p50"] - peer["ttft_ms_p50"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print("\n| front | C | output tok/s (rounds) | ratio to direct | TTFT p50 ms | added TTFT p50 ms | dropped |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        rounds = " / ".join(f"{x:.0f}" for x in r["output_tok_s_rounds"])
        print(
            f"| {r['front']} | {r['concurrency']} | {r['output_tok_s']:.1f} ({rounds}) | {r['tok_s_ratio']:.3f} | "
            f"{r['ttft_ms_p50']:.1f} | {r['ttft_added_ms']:+.1f} | {r['dropped']} of {r['requests']} |"
        )
    console.print(f"\nwrote {args.out}")


def _summary(front: str, concurrency: int, rounds: list[Level]) -> dict[str, Any]:
    """The median round's throughput; TTFT pooled over every round."""
    rates = [lv.tokens / lv.wall_s if lv.wall_s else 0.0 for lv in rounds]
    ttft = [t for lv in rounds for t in lv.ttft_ms]
    return {
        "front": front,
        "concurrency": concurrency,
        "requests": sum(lv.requests for lv in rounds),
        "dropped": sum(lv.dropped for lv in rounds),
        "drop_reasons": sorted({r for lv in rounds for r in lv.reasons}),
        "output_tok_s": statistics.median(rates),
        "output_tok_s_rounds": rates,
        "ttft_ms_p50": percentile(ttft, 50),
    }


if __name__ == "__main__":
    main()
