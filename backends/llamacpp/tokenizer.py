"""The tokenizer half of the Backend interface over a llama.cpp model, shared by the
backends that load GGUFs (llamacpp, speculative): ids with the model's BOS, every
token's bytes, and the chat template the GGUF carries."""

from __future__ import annotations

from backends.base import ChatTemplateInfo
from backends.llamacpp.engine import LlamaEngine


def chat_template_of(engine: LlamaEngine) -> ChatTemplateInfo | None:
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
    def engine(self) -> LlamaEngine:
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
    def max_model_len(self) -> int:
        return self.engine.n_ctx_seq

    @property
    def chat_template(self) -> ChatTemplateInfo | None:
        return self._chat_template
