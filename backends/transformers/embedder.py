"""The `transformers` backend for an embedding model (task `embed`): a sentence-transformers
folder run through transformers' `AutoModel`, pooled and normalized the way the
folder declares (modules.json, the Pooling module's config.json, a Normalize
module), the inputs of concurrent requests padded into shared batches."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import BackendError, BackendStats, Kind, engine_config
from backends.embedding import EmbedBatcher, Vectors, normalized
from backends.hf_tokenizer import HfTokenizer, HfTokenizerMethods
from backends.memory import peak_rss_bytes
from backends.transformers.model import placement

POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken")


@dataclass(slots=True, frozen=True)
class Pooling:
    """What a sentence-transformers folder says to do with the token vectors."""

    modes: tuple[str, ...] = ("mean_tokens",)  # concatenated in this order, as sentence-transformers does
    normalize: bool = False
    max_seq_length: int | None = None
    modules: list[str] = field(default_factory=list)


def read_pooling(folder: Path) -> Pooling:
    """The folder's pooling modes, Normalize and max_seq_length; a plain transformers
    folder (no modules.json) gets mean pooling, normalized, as most embedding servers do."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return Pooling(normalize=True)
    modules = json.loads(modules_file.read_text())
    types = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    unknown = sorted(set(types) - {"Transformer", "Pooling", "Normalize"})
    if unknown:  # a Dense layer, say: better refused than an embedding that is quietly wrong
        raise ValueError(f"{folder}: sentence-transformers modules {unknown} are not supported")
    modes: tuple[str, ...] = ("mean_tokens",)
    for m in modules:
        if str(m["type"]).endswith("Pooling"):
            config = json.loads((folder / m["path"] / "config.json").read_text())
            modes = tuple(mode for mode in POOLING_MODES if config.get(f"pooling_mode_{mode}"))
    bert_config = folder / "sentence_bert_config.json"
    max_len = json.loads(bert_config.read_text()).get("max_seq_length") if bert_config.is_file() else None
    return Pooling(modes, "Normalize" in types, max_len, types)


def pool(hidden: Any, mask: Any, modes: tuple[str, ...]) -> Any:
    """sentence-transformers' Pooling on a padded batch (hidden: batch x tokens x dim)."""
    import torch

    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    lengths = mask_f.sum(1).clamp(min=1e-9)
    parts = []
    for mode in modes:
        if mode == "cls_token":
            parts.append(hidden[:, 0])
        elif mode == "mean_tokens":
            parts.append((hidden * mask_f).sum(1) / lengths)
        elif mode == "mean_sqrt_len_tokens":
            parts.append((hidden * mask_f).sum(1) / lengths.sqrt())
        elif mode == "max_tokens":
            parts.append(hidden.masked_fill(mask_f == 0, -1e9).max(1).values)
        elif mode == "lasttoken":  # right padding: the last real token of each row
            parts.append(hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1])
    return torch.cat(parts, dim=-1)


@dataclass(slots=True)
class TransformersEmbedConfig:
    path: str
    device: str = "auto"
    dtype: str = "auto"  # auto: float32 on the CPU, bfloat16 on CUDA
    max_inputs: int = 64  # inputs per forward
    max_batch_tokens: int = 8192  # padded tokens per forward (inputs x the longest)
    n_threads: int = 0

    def __post_init__(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"the transformers backend loads a Hugging Face folder; {self.path} is not one")


class TransformersEmbedder(HfTokenizerMethods):
    name = "transformers"
    kind = Kind.ENGINE

    def __init__(self, path: str | None = None, **options: object) -> None:
        if not path:
            raise ValueError("the transformers backend needs a model path (a Hugging Face folder)")
        self.config = engine_config(TransformersEmbedConfig, "transformers (embed)", options, path=path)
        self.pooling = read_pooling(Path(self.config.path))
        self._model: Any = None
        self._device = "cpu"
        self._pad = 0
        self._dim = 0
        self._batcher: EmbedBatcher | None = None
        self._weight_bytes: int | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        c = self.config
        self._batcher = EmbedBatcher(
            "transformers-embed",
            self._forward,
            c.max_inputs,
            c.max_batch_tokens,
            cost=lambda batch: len(batch) * max(len(t) for t in batch),  # padded to the longest
        )
        self._batcher.start()

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        c = self.config
        self._device, dtype = placement(c.device, c.dtype, c.n_threads)
        model = AutoModel.from_pretrained(c.path, dtype=getattr(torch, dtype))
        model.to(self._device)
        model.train(False)
        self._model = model
        self._weight_bytes = int(model.get_memory_footprint())
        tok = AutoTokenizer.from_pretrained(c.path)
        self._tokenizer = HfTokenizer(c.path, tok)
        self._pad = tok.pad_token_id or 0
        width = int(model.config.hidden_size)
        self._dim = width * len(self.pooling.modes)
        limits = [getattr(model.config, "max_position_embeddings", None), self.pooling.max_seq_length]
        self._max_len = min(x for x in limits if x) if any(limits) else 512

    async def stop(self) -> None:
        if self._batcher is not None:
            await asyncio.to_thread(self._batcher.stop)
            self._batcher = None
        self._model = None

    async def embed(self, inputs: list[list[int]]) -> Vectors:
        if self._batcher is None:
            raise BackendError("the transformers backend is not started")
        return await self._batcher.submit(inputs)

    def _forward(self, batch: list[list[int]]) -> Vectors:
        import torch

        width = max(len(t) for t in batch)
        ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        with torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
            vectors = pool(hidden, mask, self.pooling.modes).float().cpu().numpy()
        rows = np.asarray(vectors, dtype=np.float32)
        return normalized(rows) if self.pooling.normalize else rows

    @property
    def embedding_dim(self) -> int:
        return self._dim

    def stats(self) -> BackendStats:
        batcher = self._batcher
        return BackendStats(
            running=batcher.running if batcher else 0,
            waiting=batcher.waiting if batcher else 0,
            max_running=self.config.max_inputs,
            weight_bytes=self._weight_bytes,
            running_memory_bytes=peak_rss_bytes(),
        )
