"""What one draw costs on the scheduler's thread, by sampling parameters: llama.cpp's
sampler chain against Lightgate's numpy one (`backends/llamacpp/sampler.py`
`Filtered`), on real rows of logits (16 sequences of a batch) of a GGUF's vocabulary.
The scheduler draws once per sequence per step while ggml's threads wait, so at 16
sequences a draw's cost counts 16 times in every step. The draws run on a thread of
their own, as the scheduler's do, and their page faults are counted; a loop of draws
alone may fault less than the gateway's scheduler did (600k faults in 30 s at 16
streams, before a draw wrote into scratch rows), where other threads allocate too.

    .venv/bin/python -m benchmarks.sampler_cost --gguf GGUF
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ThreadPoolExecutor

from backends.base import SamplingParams
from backends.llamacpp.engine import EngineConfig, LlamaEngine, init_backend
from backends.llamacpp.sampler import SamplerChain, sampler_steps
from benchmarks.common import print_table

ROWS = 16
CASES = {
    "greedy": SamplingParams(max_tokens=8, temperature=0),
    "temperature 1": SamplingParams(max_tokens=8),
    "temperature 0.7, top_p 0.95": SamplingParams(max_tokens=8, temperature=0.7, top_p=0.95),
    "temperature 1, top_p 0.95": SamplingParams(max_tokens=8, top_p=0.95),
    "temperature 1, top_k 40": SamplingParams(max_tokens=8, top_k=40),
}


def per_draw(engine: LlamaEngine, params: SamplingParams, native: bool, repeats: int) -> tuple[float, float]:
    """ms a draw, and page faults a draw, on the calling thread."""
    chains = [SamplerChain(sampler_steps(params, 512), engine.n_vocab, native=native) for _ in range(ROWS)]
    for row, chain in enumerate(chains):  # once untimed: first-use costs (a thread's scratch rows)
        chain.sample(engine.ctx, row, engine.logits(row))
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    began = time.perf_counter()
    for _ in range(repeats):
        for row, chain in enumerate(chains):
            chain.sample(engine.ctx, row, engine.logits(row))
    elapsed = time.perf_counter() - began
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
    for chain in chains:
        chain.close()
    return 1000 * elapsed / (repeats * ROWS), faults / (repeats * ROWS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    init_backend(False)
    engine = LlamaEngine(EngineConfig(args.gguf, 512, 512, ROWS, 2, 2, 0, True, None, False))
    try:
        # Sixteen sequences, each a line of prose, then one decode: rows as a batch leaves them.
        text = "The harbour town woke early; fishing boats left before dawn and came back at noon."
        prompt = engine.tokenize(text)
        tokens = prompt * ROWS
        positions = [p for _ in range(ROWS) for p in range(len(prompt))]
        seqs = [s for s in range(ROWS) for _ in prompt]
        wants = [False] * len(tokens)
        engine.decode(tokens, positions, seqs, wants)
        engine.decode([prompt[-1]] * ROWS, [len(prompt)] * ROWS, list(range(ROWS)), [True] * ROWS)
        rows = []
        with ThreadPoolExecutor(1) as thread:
            for name, params in CASES.items():
                native, native_faults = thread.submit(per_draw, engine, params, True, args.repeats).result()
                ours, faults = thread.submit(per_draw, engine, params, False, args.repeats).result()
                cells = [f"{native:.2f} ({native_faults:.0f})", f"{ours:.2f} ({faults:.0f})", f"{native / ours:.1f}x"]
                rows.append([name, *cells, f"{ROWS * ours:.1f}"])
        print(f"{engine.n_vocab:,} tokens in the vocabulary")
        columns = ["sampling", "llama.cpp chain ms (faults)", "Lightgate ms (faults)", "speed-up"]
        columns.append("16 draws, ms a step")
        print_table(columns, rows)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
