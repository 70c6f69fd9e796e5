"""A logits processor for tests of the per-sequence seam (backends/sampling.py's
`constrain`): it keeps only some tokens, as a grammar's mask does, and records the
history it was called with each time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from backends.base import Backend, Chunk


class AllowOnly:
    def __init__(self, allowed: Iterable[int]) -> None:
        self.allowed = np.array(sorted(allowed))
        self.histories: list[list[int]] = []

    def __call__(self, generated: Sequence[int], logits: npt.NDArray[np.float32]) -> None:
        self.histories.append(list(generated))
        keep = logits[self.allowed].copy()
        logits[:] = -np.inf
        logits[self.allowed] = keep


def digit_tokens(backend: Backend) -> set[int]:
    """Tokens made only of digits and spaces (at least one digit): a small language."""
    out = set()
    for t in range(backend.vocab_size):
        piece = backend.token_bytes(t)
        if piece and all(c in b"0123456789 " for c in piece) and any(c in b"0123456789" for c in piece):
            out.add(t)
    return out


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]
