"""GPU memory per engine worker (run by scripts/gpu_check.sh, with llama.cpp built
for CUDA): a llama.cpp worker with every layer on the GPU serves a few requests; NVML
must count GPU memory for the worker's own process (what the memory budget's
`gpu_memory_budget` adds up), and the table sets it beside the estimate the budget
uses before a model's first run.

    python3 tests/gpu/check_worker_gpu_memory.py"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backends.base import GenerationRequest, SamplingParams
from backends.worker.backend import WorkerBackend
from compressed_models.catalog import resolve
from gateway.gpu import GpuCollector

MiB = 2**20


async def answer(worker: WorkerBackend, req: GenerationRequest) -> int:
    return sum([len(chunk.token_ids) async for chunk in worker.generate(req)])


async def main() -> int:
    gpu = GpuCollector.create()
    if gpu is None:
        print("NVML sees no GPU")
        return 1
    path = str(resolve("smollm2-135m-instruct-q4_1"))
    print("\n| SmolLM2 Q4_1 worker, all layers on GPU 0 | estimate MiB | NVML for its pid, MiB | measured / estimate |")
    print("|---|---|---|---|")
    failures = 0
    for options in ({"n_ctx": 512, "n_parallel": 4}, {"n_ctx": 2048, "n_parallel": 8}):
        worker = WorkerBackend("llamacpp", path, {**options, "n_gpu_layers": -1}, label="gpu-check")
        await worker.start()
        tokens = worker.tokenize("The capital of France is")
        params = SamplingParams(max_tokens=32, temperature=0.0)
        await asyncio.gather(*(answer(worker, GenerationRequest(f"r{i}", tokens, params)) for i in range(4)))
        time.sleep(0.5)  # NVML's per-process count is a sample: let the last step's buffers settle
        held = gpu.by_process().get(worker.pid or -1, {})
        estimate = worker.gpu_estimate_bytes()
        shape = f"{options['n_parallel']} x {options['n_ctx']}"
        measured, guessed = held.get(0, 0), estimate.get(0, 0)
        ratio = f"{measured / guessed:.2f}" if guessed else "-"
        print(f"| {shape} | {guessed / MiB:.0f} | {measured / MiB:.0f} (all GPUs: {held}) | {ratio} |")
        failures += not measured  # the worker's pid must be seen holding GPU memory
        await worker.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
