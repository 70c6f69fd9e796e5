"""What the benchmarks share: Lightgate configs, latency statistics, tables and JSON,
GuideLLM as a load client (servers in their own processes come from leanhttp/local.py)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def lightgate_config(models: list[dict[str, Any]], **settings: Any) -> Path:
    path = Path(tempfile.mkdtemp()) / "lightgate.yaml"
    path.write_text(json.dumps({"models": models, **settings}))  # JSON is YAML
    return path


def baseline_env(checkout: str) -> dict[str, str]:
    """The environment that runs another checkout of Lightgate (a git worktree of an
    earlier commit) with this venv: its packages first on the path. Run beside the
    current code in one run, it says what a change costs, free of the machine's drift.
    PYTHONSAFEPATH: `python -m` otherwise puts its working directory first on the path,
    ahead of PYTHONPATH, and a benchmark run from this checkout then served this
    checkout's code as the baseline (every --baseline figure before this was so)."""
    root = Path(checkout).resolve()
    env = {"PYTHONPATH": str(root), "PYTHONSAFEPATH": "1"}
    # Checked, not assumed: which `backends` a server started so from here would import.
    where = subprocess.run(
        [sys.executable, "-c", "import backends; print(backends.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(root):
        raise RuntimeError(f"the baseline {root} would run {where}, not its own code")
    return env


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def save_json(path: str | Path, data: Any) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table on stdout, ready for docs/benchmarks.md."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def guidellm(
    exe: str,
    tokenizer: str,
    base: str,
    model: str,
    data: str,
    streams: int,
    requests: int,
    nice: int = 0,
    seed: int = 42,
) -> dict[str, float]:
    """One GuideLLM run (`exe`, its own venv: it is not a project dependency) against
    `base`: `streams` concurrent streams of its synthetic requests (`data`, GuideLLM's
    syntax) until `requests` are done; its own figures of the successful requests.
    `tokenizer`: a Hugging Face folder with the served model's vocabulary. `nice`: the
    client's scheduling niceness, where it shares the server's few cores. `seed`: its
    synthetic text's (42 is GuideLLM's default; another gives other prompts, a shared
    prefix included)."""
    out = Path(tempfile.mkdtemp()) / "guidellm.json"
    cmd = ["nice", "-n", str(nice), exe, "run", "--backend", f"kind=openai_http,target={base},model={model}"]
    cmd += ["--profile", f"kind=concurrent,streams={streams}", "--constraint", f"kind=max_requests,count={requests}"]
    cmd += ["--seed", f"kind=static,value={seed}"]
    cmd += ["--tokenizer", f"kind=hf_auto,model={tokenizer}", "--data", data]
    cmd += ["--output", f"kind=json,path={out}", "--disable-progress", "--disable-console"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"guidellm failed: {done.stderr[-2000:]}")
    run = json.loads(out.read_text())["benchmarks"][0]
    metrics = run["metrics"]

    def ok(name: str) -> Any:
        return metrics[name]["successful"]

    return {
        "requests": ok("time_to_first_token_ms")["count"],
        "ttft_p50_ms": ok("time_to_first_token_ms")["median"],
        "ttft_mean_ms": ok("time_to_first_token_ms")["mean"],
        "ttft_p99_ms": ok("time_to_first_token_ms")["percentiles"]["p99"],
        "itl_p50_ms": ok("inter_token_latency_ms")["median"],
        "itl_mean_ms": ok("inter_token_latency_ms")["mean"],
        "output_tokens_per_s": ok("output_tokens_per_second")["mean"],
    } | {f"ttft_p50_ms_wave_{i}": ms for i, ms in enumerate(waves(run["requests"]["successful"], streams), 1)}


def waves(requests: list[dict[str, Any]], streams: int) -> list[float]:
    """TTFT p50 of each wave of `streams` requests, in the order GuideLLM started them
    (its per-request records): a closed loop's first wave queues behind one another's
    prompts, and the waves after it fall in or out of step, so a p50 over few requests
    says which wave it landed in."""
    started = sorted(requests, key=lambda r: r["request_start_time"])
    ttfts = [r["time_to_first_token_ms"] for r in started]
    return [statistics.median(ttfts[i : i + streams]) for i in range(0, len(ttfts), streams)]
