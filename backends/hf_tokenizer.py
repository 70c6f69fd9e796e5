"""A Hugging Face tokenizer as the gateway needs it, shared by the backends that
load HF folders (transformers, vllm): token ids with the model's BOS, every
token's bytes, the end-of-sequence ids and the chat template.

The gateway streams text by pushing token bytes through a UTF-8 decoder
(backends/textstream.py), so a character split across tokens is never sent half;
HF tokenizers store tokens as strings in one of two encodings, undone here once
per model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from backends.base import BackendError, ChatTemplateInfo

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE: each byte is shown as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes_table(tokenizer: Any) -> list[bytes]:
    """The bytes of token id i, for every id the tokenizer knows."""
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    byte_level = "ByteLevel" in json.dumps(decoder)
    alphabet = _byte_level_alphabet() if byte_level else {}
    added = {token.content for token in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()}
    size = max(len(tokenizer), tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True))
    table = []
    for piece in tokenizer.convert_ids_to_tokens(list(range(size))):
        if piece is None:
            table.append(b"")
        elif piece in added:
            table.append(piece.encode())
        elif byte_level:
            table.append(bytes(alphabet[c] for c in piece if c in alphabet))
        elif match := _BYTE_TOKEN.fullmatch(piece):  # SentencePiece's byte fallback
            table.append(bytes([int(match.group(1), 16)]))
        else:
            table.append(piece.replace("▁", " ").encode())
    return table


class HfTokenizer:
    def __init__(self, folder: Path | str, tokenizer: Any = None) -> None:
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.hf = tokenizer
        self.bytes = token_bytes_table(tokenizer)
        self.eos_ids = _eos_ids(Path(folder), tokenizer)
        source = tokenizer.chat_template
        self.chat_template = (
            ChatTemplateInfo(source, tokenizer.bos_token or "", tokenizer.eos_token or "")
            if isinstance(source, str)
            else None
        )

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        tokens: list[int] = self.hf(text, add_special_tokens=bos, split_special_tokens=not special)["input_ids"]
        bos_id = self.hf.bos_token_id
        if special and len(tokens) > 1 and tokens[0] == tokens[1] == bos_id:
            tokens = tokens[1:]  # the text wrote a BOS and the tokenizer added one too
        return tokens

    def detokenize(self, token_ids: list[int]) -> str:
        return str(self.hf.decode(token_ids))


def _eos_ids(folder: Path, tokenizer: Any) -> list[int]:
    """What ends a sequence: generation_config.json's eos_token_id (one or a list),
    which chat models set to their turn-end token, and the tokenizer's EOS."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = folder / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids)


class HfTokenizerMethods:
    """The tokenizer half of the Backend interface for backends that load an HF
    folder; the backend sets `_tokenizer` when it starts and `_max_len`."""

    name: str
    _tokenizer: HfTokenizer | None = None
    _max_len: int = 0

    @property
    def tokenizer(self) -> HfTokenizer:
        if self._tokenizer is None:
            raise BackendError(f"the {self.name} backend is not started")
        return self._tokenizer

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        return self.tokenizer.tokenize(text, special=special, bos=bos)

    def detokenize(self, token_ids: list[int]) -> str:
        return self.tokenizer.detokenize(token_ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.tokenizer.bytes[token_id]

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer.bytes)

    @property
    def max_model_len(self) -> int:
        return self._max_len

    @property
    def chat_template(self) -> ChatTemplateInfo | None:
        return self._tokenizer.chat_template if self._tokenizer else None
