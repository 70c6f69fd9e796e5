"""The memory budget's first guess against what a worker then holds: each model in a
fresh worker process, its engine's `memory_estimate` beside the old flat guess (the
weight files plus a fifth, plus 160 MiB) and the worker's peak RSS after a 32-token
generation. The prompt store's budget is part of the estimate (it fills only as
prompts come and go), so the ratio is taken without it.

    .venv/bin/python -m benchmarks.memory_estimate
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.progress import track

from backends.base import GenerationRequest, SamplingParams, engine_config
from backends.llamacpp.backend import LlamaCppConfig
from backends.worker.backend import WorkerBackend
from benchmarks.common import print_table, save_json
from compressed_models.catalog import resolve
from gateway.residency import ESTIMATE_FACTOR, WORKER_BASE_BYTES

CASES: list[tuple[str, dict[str, object]]] = [
    ("smollm2-135m-instruct-bf16-from-q4_1", {"max_model_len": 512}),  # lightgate models export-hf first
    ("smollm2-135m-instruct-q4_1", {}),
    ("smollm2-135m-instruct-q4_1", {"n_ctx": 512, "n_parallel": 4}),
    ("qwen2.5-coder-0.5b-instruct-q4_k_m", {}),
    ("qwen2.5-coder-0.5b-instruct-q4_k_m", {"n_ctx": 512, "n_parallel": 2}),
]


async def measure(variant: str, options: dict[str, object]) -> dict[str, Any]:
    path = str(resolve(variant))
    folder = Path(path).is_dir()
    worker = WorkerBackend("transformers" if folder else "llamacpp", path, options)
    files = [f for f in Path(path).rglob("*") if f.is_file()] if folder else [Path(path)]
    weights = sum(f.stat().st_size for f in files)  # what the flat guess counted
    store = 0 if folder else engine_config(LlamaCppConfig, "llamacpp", dict(options), path=path).cache_ram_mib * 2**20
    estimate = worker.estimate_bytes()
    await worker.prepare()
    await worker.start()
    try:
        prompt = worker.tokenize("The capital of France is")
        request = GenerationRequest("probe", prompt, SamplingParams(max_tokens=32, temperature=0.0))
        async for _ in worker.generate(request):
            pass
        await asyncio.sleep(1.0)  # the worker's stats come between steps and on a heartbeat
        held = worker.stats().running_memory_bytes
    finally:
        await worker.stop()
    return {
        "variant": variant,
        "options": options,
        "old_estimate": int(weights * ESTIMATE_FACTOR) + WORKER_BASE_BYTES,
        "store": store,
        "estimate": estimate,
        "held": held,
    }


def main() -> None:
    rows = [asyncio.run(measure(v, o)) for v, o in track(CASES, description="workers")]
    mib = 2**20
    print_table(
        [
            "model, options",
            "estimate (flat)",
            "engine's (of which prompt store)",
            "measured peak",
            "engine's less store / measured",
        ],
        [
            [
                f"{r['variant']} {r['options'] or 'defaults'}",
                f"{r['old_estimate'] / mib:,.0f} MiB",
                f"{r['estimate'] / mib:,.0f} MiB ({r['store'] / mib:,.0f})",
                f"{r['held'] / mib:,.0f} MiB",
                f"{(r['estimate'] - r['store']) / r['held']:.2f}",
            ]
            for r in rows
        ],
    )
    save_json("bench-results/memory-estimate.json", rows)


if __name__ == "__main__":
    main()
