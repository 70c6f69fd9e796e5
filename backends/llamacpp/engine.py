"""A thin, typed handle on llama.cpp through llama-cpp-python's low-level (ctypes) API:
load a GGUF, tokenize, decode batches of tokens, read logits, free sequences.

The high-level `llama_cpp.Llama` class hides the batch: it decodes one sequence
and scores prompt tokens at the wrong position under echo. Going one level down
gives us the batch, which is what continuous batching and correct prompt
logprobs both need."""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np
import numpy.typing as npt

from backends.llamacpp.prompt_store import new_buffer

if TYPE_CHECKING:
    from backends.llamacpp.prompt_store import Buffer, State

# The KV cell types llama-server accepts for --cache-type-k/-v, by name.
CACHE_TYPES = {
    "f32": llama_cpp.GGML_TYPE_F32,
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q5_1": llama_cpp.GGML_TYPE_Q5_1,
    "q5_0": llama_cpp.GGML_TYPE_Q5_0,
    "q4_1": llama_cpp.GGML_TYPE_Q4_1,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
    "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL,
}

# Bytes per element of each KV cell type (a quantized block's size over its 32 elements).
CACHE_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32}
CACHE_TYPE_BYTES |= {"q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}

_backend_lock = threading.Lock()
_backend_ready = False


def init_backend(verbose: bool) -> None:
    """llama.cpp's process-wide set-up, once, before any model loads (tools that load a
    model without an engine, such as the catalog's parameter count, call it too)."""
    global _backend_ready
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True


@dataclass(slots=True, frozen=True)
class EngineConfig:
    path: str
    n_ctx_seq: int  # context of each sequence; the context holds n_seq_max of them
    n_batch: int
    n_seq_max: int
    n_threads: int
    n_threads_batch: int
    n_gpu_layers: int
    use_mmap: bool
    flash_attn: bool | None  # None: llama.cpp decides (on for CPU)
    verbose: bool
    # One KV stream whose cells sequences share (a prefix computed once is held once),
    # or one stream of n_ctx_seq cells per sequence (a shared prefix is copied).
    kv_unified: bool = False
    # KV cell types (llama.cpp's GGML types: f16, q8_0, q4_0); a quantized V needs flash attention.
    type_k: int | None = None
    type_v: int | None = None
    # An embedding context: pooled vectors out instead of logits, and one KV stream of
    # n_batch cells that every batch's sequences share and clear (an encoder keeps none).
    embeddings: bool = False


class LlamaVocab:
    """A GGUF's vocabulary and metadata: what tokenizing needs. Loaded alone
    (`vocab_only`, no weights: a few MB) it is the gateway's tokenizer for a model
    whose engine runs in a worker process. Tokenizing may happen from any thread."""

    def __init__(
        self, path: str, *, verbose: bool = False, vocab_only: bool = True, n_gpu_layers: int = 0, use_mmap: bool = True
    ) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        init_backend(verbose)
        mparams = llama_cpp.llama_model_default_params()
        mparams.vocab_only = vocab_only
        mparams.n_gpu_layers = n_gpu_layers
        mparams.use_mmap = use_mmap
        model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.model = model
        vocab = llama_cpp.llama_model_get_vocab(model)
        assert vocab is not None
        self.vocab = vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.eog_ids = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        self.eog_set = frozenset(self.eog_ids)
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        llama_cpp.llama_model_free(self.model)

    # -- vocabulary ---------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token_id: int) -> bytes:
        """The bytes a token stands for (empty for control tokens such as EOS)."""
        cached = self._pieces.get(token_id)
        if cached is None:
            cached = self._pieces[token_id] = self.raw_piece(token_id, special=False)
        return cached

    def raw_piece(self, token_id: int, *, special: bool) -> bytes:
        """A token's bytes; `special`: control tokens as their text (`<|im_end|>`)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token_id, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token_id, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, token_ids: list[int]) -> str:
        return b"".join(self.piece(t) for t in token_ids).decode("utf-8", errors="replace")

    @property
    def bos_id(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def add_bos(self) -> bool:
        """Whether the model's tokenizer starts a text with BOS."""
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def hparam(self, key: str) -> int | None:
        """A whole-number hyperparameter of the GGUF's architecture (`block_count`, ...)."""
        arch = self.metadata("general.architecture") or ""
        value = self.metadata(f"{arch}.{key}")
        return int(value) if value is not None and value.isdigit() else None

    def kv_cell_bytes(self, type_k: str, type_v: str) -> int:
        """What one KV cell (one token's keys and values in every layer) takes, from the
        GGUF's hyperparameters: a vocabulary-only load has them as metadata (its
        per-layer accessors are not filled in and abort)."""
        number = self.hparam
        n_layer, n_embd, n_head = number("block_count"), number("embedding_length"), number("attention.head_count")
        if not (n_layer and n_embd and n_head):
            raise ValueError(f"the GGUF does not say its layers and heads ({self.metadata('general.architecture')})")
        n_head_kv = number("attention.head_count_kv") or n_head
        head_k = number("attention.key_length") or n_embd // n_head
        head_v = number("attention.value_length") or n_embd // n_head
        per_layer = n_head_kv * (head_k * CACHE_TYPE_BYTES[type_k] + head_v * CACHE_TYPE_BYTES[type_v])
        return int(n_layer * per_layer)

    def token_text(self, token_id: int) -> str:
        """A token's text as written in the vocabulary, special tokens included."""
        if token_id < 0:
            return ""
        return self.raw_piece(token_id, special=True).decode("utf-8", errors="replace")


class LlamaEngine(LlamaVocab):
    """One model and one context. Not thread-safe for decoding: one thread drives it.
    Tokenizing reads only the vocabulary and may happen from any thread."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        super().__init__(
            config.path,
            verbose=config.verbose,
            vocab_only=False,
            n_gpu_layers=config.n_gpu_layers,
            use_mmap=config.use_mmap,
        )

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = config.n_ctx_seq * config.n_seq_max
        cparams.n_batch = config.n_batch
        cparams.n_ubatch = config.n_batch  # a non-causal model needs each sequence in one ubatch
        cparams.n_seq_max = config.n_seq_max
        # One KV stream per sequence: each gets its full context, and attention does not
        # scan the other sequences' cells (llama.h advises this for unrelated prompts).
        # Unified: one stream of the same total size, whose cells sequences can share.
        cparams.kv_unified = config.kv_unified
        if config.type_k is not None:
            cparams.type_k = config.type_k
        if config.type_v is not None:
            cparams.type_v = config.type_v
        if config.embeddings:
            cparams.n_ctx = config.n_batch
            cparams.kv_unified = True
            cparams.embeddings = True  # pooling: the GGUF's own (pooling_type left unspecified)
        cparams.n_threads = config.n_threads
        cparams.n_threads_batch = config.n_threads_batch
        cparams.no_perf = True
        if config.flash_attn is not None:
            cparams.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if config.flash_attn
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        model = self.model
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise RuntimeError(f"llama.cpp could not create a context for {config.path}")
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(config.n_batch, 0, config.n_seq_max)

        # A unified stream lets one sequence grow to the whole context; each keeps to its own share.
        self.n_ctx_seq = min(int(llama_cpp.llama_n_ctx_seq(ctx)), config.n_ctx_seq)
        self.weight_bytes = int(llama_cpp.llama_model_size(model))

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    # -- decoding -----------------------------------------------------------------

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], want_logits: list[bool]) -> None:
        """Evaluate one batch (at most n_batch tokens). The logits of a flagged token
        are then readable with `logits(i)`, i its index in this batch."""
        n = len(tokens)
        if not 0 < n <= self.config.n_batch:
            raise ValueError(f"batch of {n} tokens; the limit is {self.config.n_batch}")
        b = self.batch
        b.n_tokens = n
        for i in range(n):
            b.token[i] = tokens[i]
            b.pos[i] = positions[i]
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq_ids[i]
            b.logits[i] = want_logits[i]
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """A writable view (no copy) of the logits of the index-th token of the last
        batch (which must have been flagged). It is valid until the next decode."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    @property
    def n_embd(self) -> int:
        return int(llama_cpp.llama_model_n_embd(self.model))

    @property
    def pooling(self) -> int:
        """The context's pooling type (llama_cpp.LLAMA_POOLING_TYPE_*)."""
        return int(llama_cpp.llama_pooling_type(self.ctx))

    def pooled(self, seq_id: int) -> npt.NDArray[np.float32]:
        """A copy of sequence `seq_id`'s pooled embedding from the last batch."""
        ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq_id)
        if not ptr:
            raise RuntimeError(f"llama.cpp has no pooled embedding for sequence {seq_id}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def clear(self) -> None:
        """Forget every sequence (an embedding batch leaves nothing for the next)."""
        if self.memory:  # an encoder-only model has no KV memory at all
            llama_cpp.llama_memory_clear(self.memory, True)

    def free_sequence(self, seq_id: int, start: int = 0) -> None:
        """Drop a sequence's KV cells from `start` on."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, start, -1)

    def state_size(self, seq_id: int) -> int:
        """The bytes `save_sequence` needs for this sequence."""
        return int(llama_cpp.llama_state_seq_get_size(self.ctx, seq_id))

    def save_sequence(self, seq_id: int, into: Buffer | None = None) -> memoryview:
        """A sequence's KV cells as llama.cpp serializes them (positions, keys, values):
        what `restore_sequence` puts back, in this slot or another; written into `into`
        when it is large enough (a store's buffer, see prompt_store.py), else into a new
        one (`new_buffer`: its pages fault in as llama.cpp writes). llama.cpp writes
        straight into the buffer: a save runs on the scheduler's thread between steps,
        and a second copy of its tens of megabytes (SmolLM2 at 1,000 tokens: 24 MB) took
        5-15 ms more there."""
        size = self.state_size(seq_id)
        buffer = into if into is not None and len(into) >= size else new_buffer(size)
        view = (ctypes.c_uint8 * size).from_buffer(buffer)
        n = llama_cpp.llama_state_seq_get_data(self.ctx, view, size, seq_id)
        del view
        return memoryview(buffer)[:n]

    def restore_sequence(self, state: State, seq_id: int) -> bool:
        """Replace a sequence's cells with saved ones; False when llama.cpp found no room."""
        self.free_sequence(seq_id)
        buf = (ctypes.c_uint8 * len(state)).from_buffer(state)  # read in place, not copied
        if llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(state), seq_id) == 0:
            self.free_sequence(seq_id)
            return False
        return True

    def share(self, src: int, dst: int, end: int) -> None:
        """Give sequence `dst` the KV of `src` at positions [0, end) in place of its own
        (the same tokens at the same positions, so the same KV, but computed in other
        batches: taken whole, the prefix stays one computation's, and rounds as it).

        In a unified KV stream no tensor data moves: the cells gain `dst`'s id and live
        on until every sequence holding them lets go. Between streams llama.cpp copies
        whole streams only (every layer's K and V, at the next decode, before that step
        writes anything): `dst` gets all of `src` and lets go of what lies past `end`."""
        if self.config.kv_unified:
            llama_cpp.llama_memory_seq_rm(self.memory, dst, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.memory, src, dst, 0, end)
        else:
            llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.memory, dst, end, -1)
