"""What a step costs in one unified KV stream against a stream per sequence, by the
context the sequences hold, with ggml's flash attention and without: the price of
`kv_unified` and of `flash_attn` on a CPU.

Four sequences each hold `context` cells; then steps of 1, 4 and 9 rows from each (a
decode step, and steps where every sequence drafts 3 or 8 tokens), prompts of 16 and
40 tokens (chat turns after a cached system prompt), the 40-token prompt beside a
decode row of each other sequence (the step a chat turn joins in a server), and a
256-token prompt chunk of one sequence beside the other three's cells; the median of
`--repeats` timings, on llama.cpp through the engine the llamacpp backend drives. In
one stream every row's attention runs over every sequence's cells, masked: ggml's
CPU flash attention skips a masked cell's dot product, but still reads and tests its
mask entry, per row and head and layer; without flash attention every row's dot
products run over every cell. With a stream per sequence a row sees only its own
cells, but a step whose sequences bring different numbers of rows is split into
weight passes (backends/lookup.py, `passes`): every step here is one pass in both
but the prompt beside decode rows, which with a stream per sequence is two, as in a
server. Flash attention on a CPU takes one query row at a time; without it the
scores are a matrix product, which ggml tiles over the rows.

    .venv/bin/python -m benchmarks.kv_layout qwen2.5-coder-0.5b-instruct-iq4_nl-output-iq4_nl-from-q4_k_m

With the libraries of benchmarks/build_fa_tile_patch.sh (LLAMA_CPP_LIB_PATH) and
GGML_FA_TILE_MIN, the same steps time ggml's tiled flash attention from fewer rows.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rich.progress import track

from backends.llamacpp.engine import LlamaEngine
from benchmarks.common import print_table
from benchmarks.step_costs import cpu_engine
from compressed_models.catalog import resolve

SEQUENCES = 4
CONTEXTS = (200, 800, 1600)
ROWS = (1, 4, 9)  # from each sequence: a decode step, drafts of 3 and of 8
CHUNK = 256  # a prompt chunk of one sequence beside the others
TURNS = (16, 40)  # chat turns' prompts after their cached system prompt
LAYOUTS = {  # (unified, flash attention)
    "a stream each": (False, True),
    "a stream each, no flash attention": (False, False),
    "one unified stream": (True, True),
    "one unified stream, no flash attention": (True, False),
}


def fill(e: LlamaEngine, token: int, context: int) -> None:
    """`context` cells in every sequence, a chunk at a time."""
    for seq in range(SEQUENCES):
        for start in range(0, context, CHUNK):
            n = min(CHUNK, context - start)
            e.decode([token] * n, list(range(start, start + n)), [seq] * n, [False] * n)


def timings(e: LlamaEngine, token: int, context: int, repeats: int) -> dict[str, float]:
    """Median seconds of each step, the cells each adds freed after it."""
    out: dict[str, float] = {}
    for rows in ROWS:
        times = []
        for _ in range(repeats):
            seqs = [s for s in range(SEQUENCES) for _ in range(rows)]
            positions = [context + j for _ in range(SEQUENCES) for j in range(rows)]
            started = time.perf_counter()
            e.decode([token] * len(seqs), positions, seqs, [True] * len(seqs))
            times.append(time.perf_counter() - started)
            for seq in range(SEQUENCES):
                e.free_sequence(seq, context)
        out[f"{rows} rows each"] = statistics.median(times)
    for n in (*TURNS, CHUNK):
        times = []
        for _ in range(repeats):  # sequence 0 reads a prompt past its cells
            started = time.perf_counter()
            e.decode([token] * n, list(range(context, context + n)), [0] * n, [False] * (n - 1) + [True])
            times.append(time.perf_counter() - started)
            e.free_sequence(0, context)
        out[f"{n}-token prompt"] = statistics.median(times)
    n = TURNS[-1]
    times = []
    for _ in range(repeats):  # the prompt and, in the same llama_decode, a row of each other sequence
        others = list(range(1, SEQUENCES))
        started = time.perf_counter()
        e.decode(
            [token] * (n + len(others)),
            [*range(context, context + n), *([context] * len(others))],
            [0] * n + others,
            [False] * (n - 1) + [True] * (1 + len(others)),
        )
        times.append(time.perf_counter() - started)
        for seq in range(SEQUENCES):
            e.free_sequence(seq, context)
    out[f"{n}-token prompt + a row each"] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", help="a catalog variant (GGUF)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS), help="cells each sequence holds")
    parser.add_argument(
        "--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS), help="the first is the one compared to"
    )
    args = parser.parse_args()
    path = str(resolve(args.variant))
    layouts: list[str] = args.layouts
    results: dict[tuple[int, str], dict[str, float]] = {}
    for context, layout in track([(c, n) for c in args.contexts for n in layouts], description="layouts"):
        unified, flash_attn = LAYOUTS[layout]
        e = cpu_engine(path, args.threads, SEQUENCES, unified, flash_attn)
        try:
            token = e.bos_id if e.bos_id >= 0 else 0
            e.decode([token], [0], [0], [True])  # sets llama.cpp up; not timed
            e.free_sequence(0)
            fill(e, token, context)
            results[(context, layout)] = timings(e, token, context, args.repeats)
        finally:
            e.close()
    rows = []
    first = layouts[0]
    for context in args.contexts:
        for step, seconds in results[(context, first)].items():
            cells = [f"{seconds * 1000:.1f}"]
            cells += [
                f"{results[(context, n)][step] * 1000:.1f} ({results[(context, n)][step] / seconds:.2f})"
                for n in layouts[1:]
            ]
            rows.append([f"{SEQUENCES} x {context} cells", step, *cells])
    heads = [f"{first}, ms", *(f"{n}, ms (to the first)" for n in layouts[1:])]
    print_table(["context", "step", *heads], rows)


if __name__ == "__main__":
    main()
