"""Every token's bytes, from a Hugging Face tokenizer. The gateway streams text by
pushing token bytes through a UTF-8 decoder (backends/textstream.py), so a
character split across tokens is never sent half; HF tokenizers store tokens as
strings in one of two encodings, undone here once per model."""

from __future__ import annotations

import json
import re
from typing import Any

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
