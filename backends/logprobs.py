"""Log-probabilities from raw logits, and the k most likely tokens."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Logits = npt.NDArray[np.float32]


def log_softmax(logits: Logits) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64)
    x -= x.max()
    out: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum())
    return out


def top_k(logprobs: npt.NDArray[np.float64], k: int) -> list[tuple[int, float]]:
    """The k most likely token ids, most likely first."""
    if k <= 0:
        return []
    k = min(k, logprobs.shape[0])
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in idx]
