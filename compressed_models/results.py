"""Evaluation results kept per variant, so that `lightgate bench compare` can put a
variant's perplexity beside its speed: `$LIGHTGATE_CACHE/eval/VARIANT.json` holds
the latest result of each protocol, context length and number of chunks (a quick
run never replaces a full one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressed_models.catalog import cache_root


def _path(variant: str) -> Path:
    return cache_root() / "eval" / f"{variant}.json"


def save(variant: str, record: dict[str, Any]) -> Path:
    """Keep `record` (with its protocol, n_ctx and chunks) as the variant's latest result of that kind."""
    path = _path(variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = load(variant)
    chunks = record.get("chunks")
    results[f"{record['protocol']}@{record['n_ctx']}" + (f"x{chunks}" if chunks is not None else "")] = record
    path.write_text(json.dumps(results, indent=1))
    return path


def load(variant: str) -> dict[str, dict[str, Any]]:
    path = _path(variant)
    return json.loads(path.read_text()) if path.exists() else {}


def perplexity(variant: str, protocol: str = "llamacpp") -> float | None:
    """The variant's perplexity by `protocol`: of its results, the one over the most tokens."""
    kept = [r for r in load(variant).values() if r.get("protocol") == protocol]
    if not kept:
        return None
    return float(max(kept, key=lambda r: int(r.get("tokens", 0)))["ppl"])
