"""What one decode step of n rows costs, by GGUF: the prices a drafter pays.

One sequence, 200 tokens of context, then a step of n rows with logits on every row
(a verification step: the last token and n - 1 drafts), the quickest of `--repeats`
timings per size, on llama.cpp through the engine the llamacpp backend drives.
Batched speculation pays where n rows cost little more than one; on a CPU they may
cost up to n times as much, and which kernels a GGUF's tensors take decides it.

    .venv/bin/python -m benchmarks.step_costs qwen2.5-coder-0.5b-instruct-q4_k_m \
        qwen2.5-coder-0.5b-instruct-q4_0-from-q4_k_m

To time another build of llama.cpp's libraries (the same version, say patched), point
llama-cpp-python at them: `LLAMA_CPP_LIB_PATH=path/to/build/bin`.
"""

from __future__ import annotations

import argparse
import time

from rich.progress import track

from backends.llamacpp.engine import EngineConfig, LlamaEngine
from compressed_models.catalog import resolve

SIZES = (1, 2, 3, 4, 6, 8, 16, 32)
CONTEXT = 200


def cpu_engine(
    path: str, threads: int, sequences: int = 4, unified: bool = False, flash_attn: bool | None = None
) -> LlamaEngine:
    """The engine as the llamacpp backend sets it up on a CPU: 2,048 cells a sequence
    (`flash_attn` None: llama.cpp's choice, on for a CPU)."""
    config = EngineConfig(
        path=path,
        n_ctx_seq=2048,
        n_batch=512,
        n_seq_max=sequences,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        use_mmap=True,
        flash_attn=flash_attn,
        verbose=False,
        kv_unified=unified,
    )
    return LlamaEngine(config)


def step_costs(path: str, repeats: int, threads: int) -> dict[int, float]:
    """Seconds per step of each size, the quickest of `repeats`."""
    engine = cpu_engine(path, threads)
    token = engine.bos_id if engine.bos_id >= 0 else 0
    context = list(range(CONTEXT))
    engine.decode([token], [0], [0], [True])  # sets llama.cpp up; not timed
    engine.free_sequence(0)
    quickest: dict[int, float] = {}
    for _ in range(repeats):
        for rows in SIZES:
            engine.decode([token] * CONTEXT, context, [0] * CONTEXT, [False] * CONTEXT)
            started = time.perf_counter()
            engine.decode([token] * rows, list(range(CONTEXT, CONTEXT + rows)), [0] * rows, [True] * rows)
            quickest[rows] = min(quickest.get(rows, float("inf")), time.perf_counter() - started)
            engine.free_sequence(0)
    return quickest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="catalog variants (GGUF)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows: list[str] = []
    for variant in track(args.variants, description="GGUFs"):
        cost = step_costs(str(resolve(variant)), args.repeats, args.threads)
        cells = " | ".join(f"{cost[n] * 1000:.1f} ({cost[n] / cost[1]:.1f}x)" for n in SIZES)
        rows.append(f"| {variant} | {cells} |")
    print("| GGUF | " + " | ".join(f"{n} rows, ms" for n in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
