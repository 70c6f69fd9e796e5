"""What the benchmarks share: Lightgate configs, latency statistics, tables and JSON
(servers in their own processes come from leanhttp/local.py)."""

from __future__ import annotations

import json
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
    current code in one run, it says what a change costs, free of the machine's drift."""
    return {"PYTHONPATH": str(Path(checkout).resolve())}


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
