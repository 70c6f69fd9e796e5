"""The tokenizer half of the Backend interface over a llama.cpp model, shared by the
backends that load GGUFs (llamacpp, speculative): ids with the model's BOS, every
token's bytes, and the chat template the GGUF carries."""

from __future__ import annotations

from typing import Any

from backends.base import ChatTemplateInfo
from backends.llamacpp.engine import LlamaVocab


def grammar_index(engine: LlamaVocab) -> Any:
    """llguidance's index of the model's vocabulary, for constrained decoding: as
    llguidance's own `lltokenizer_from_vocab` builds it (control tokens marked with a
    leading 0xff byte, so no grammar can write them), through llama.cpp's current
    vocabulary calls rather than the deprecated one it makes per token."""
    import ctypes

    import llama_cpp
    from llguidance import LLTokenizer

    tokens = []
    for token in range(engine.n_vocab):
        text = engine.raw_piece(token, special=True)
        attr = llama_cpp.llama_vocab_get_attr(engine.vocab, token)
        user_control = attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and text.startswith(b"<") and text.endswith(b">")
        if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or user_control:
            text = b"\xff" + text
        tokens.append(text)
    tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=tokens, vocab_ptr=engine.vocab, tokenize_fptr=tokenize, eos_token=engine.eog_ids
    )


def chat_template_of(engine: LlamaVocab) -> ChatTemplateInfo | None:
    source = engine.metadata("tokenizer.chat_template")
    if not source:
        return None
    eos = engine.eog_ids[0] if engine.eog_ids else -1
    return ChatTemplateInfo(source, engine.token_text(engine.bos_id), engine.token_text(eos))


class LlamaTokenizerMethods:
    """Mixed into a backend whose `engine` property is the model that tokenizes; the
    backend sets `_chat_template` when it starts (chat_template_of)."""

    _chat_template: ChatTemplateInfo | None = None

    @property
    def engine(self) -> LlamaVocab:
        raise NotImplementedError

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        tokens = self.engine.tokenize(text, add_special=bos, parse_special=special)
        bos_id = self.engine.bos_id
        if special and len(tokens) > 1 and tokens[0] == tokens[1] == bos_id:
            tokens = tokens[1:]  # the text wrote a BOS and llama.cpp added one too
        return tokens

    def detokenize(self, token_ids: list[int]) -> str:
        return self.engine.detokenize(token_ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.engine.piece(token_id)

    @property
    def vocab_size(self) -> int:
        return int(self.engine.n_vocab)

    @property
    def chat_template(self) -> ChatTemplateInfo | None:
        return self._chat_template


class LlamaTokenizer(LlamaTokenizerMethods):
    """The tokenizer half alone, on a vocabulary-only load of the GGUF (no weights):
    the gateway's side of a model whose engine runs in a worker process, so that
    tokenizing costs no round trip and goes on while the worker restarts."""

    def __init__(self, path: str, **options: object) -> None:
        self._vocab = LlamaVocab(path, verbose=bool(options.get("verbose", False)))
        self._chat_template = chat_template_of(self._vocab)

    @property
    def engine(self) -> LlamaVocab:
        return self._vocab
