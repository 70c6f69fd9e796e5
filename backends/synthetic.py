"""The `synthetic` backend: no model, a token stream with a configured time to first
token, inter-token delay and length. It measures what the gateway itself costs and
lets the load tester check itself; it is never a stand-in for a real engine.

Its tokenizer is bytes: token i < 256 is the byte i, and 256 is end-of-sequence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from backends.base import (
    BackendError,
    BackendStats,
    ChatTemplateInfo,
    Chunk,
    EngineDead,
    GenerationRequest,
    Kind,
    UnsupportedFeature,
    engine_config,
    refuse_constraint,
    refuse_logits_processors,
)
from backends.textstream import TextStream

EOS = 256
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(slots=True)
class SyntheticConfig:
    ttft_ms: float = 0.0  # delay before the first token
    itl_ms: float = 0.0  # delay between tokens
    output_tokens: int | None = None  # emit EOS after this many (unless ignore_eos); None: max_tokens
    text: str = "The quick brown fox jumps over the lazy dog. "
    n_ctx: int = 4096
    max_running: int = 256
    fail_after_tokens: int | None = None  # injected engine failure mid-stream, for error-path tests
    die_after_tokens: int | None = None  # injected engine death: this stream fails, and every later one

    def __post_init__(self) -> None:
        if self.ttft_ms < 0 or self.itl_ms < 0:
            raise ValueError("ttft_ms and itl_ms must be >= 0")
        if not self.text.isascii() or not self.text:
            raise ValueError("text must be non-empty ASCII (one byte per token)")


class SyntheticBackend:
    name = "synthetic"
    kind = Kind.ENGINE

    @classmethod
    def tokenizer_class(cls, path: str | None = None, **options: object) -> SyntheticBackend:
        """Its own tokenizer: bytes, no model (a synthetic model in a worker process)."""
        return cls(path, **options)

    def __init__(self, path: str | None = None, **options: object) -> None:
        self.config = engine_config(SyntheticConfig, "synthetic", options)
        self._running = 0
        self._generated = 0
        self._dead = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        params = req.params
        if params.logprobs is not None or params.prompt_logprobs is not None:
            raise UnsupportedFeature("the synthetic backend has no model and computes no logprobs", "logprobs")
        refuse_logits_processors(params, self.name)
        refuse_constraint(params, self.name)
        c = self.config
        if self._dead:
            raise EngineDead(f"injected death after {c.die_after_tokens} tokens (die_after_tokens)")
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            if params.max_tokens == 0:
                yield Chunk.prompt_only(None)
                return
            # Text tokens before EOS: the configured length, never under min_tokens.
            eos_at = None
            if c.output_tokens is not None and not params.ignore_eos:
                eos_at = max(c.output_tokens, params.min_tokens)
            stream = TextStream(stop=list(params.stop))
            due = loop.time() + c.ttft_ms / 1000
            for i in range(params.max_tokens):
                # Sleep to an absolute deadline so delays do not drift with load.
                await asyncio.sleep(max(0.0, due - loop.time()))
                due += c.itl_ms / 1000
                if i == c.fail_after_tokens:
                    raise BackendError(f"injected failure after {i} tokens (fail_after_tokens)")
                if i == c.die_after_tokens:
                    self._dead = True
                    raise EngineDead(f"injected death after {i} tokens (die_after_tokens)")
                token = EOS if i == eos_at else ord(c.text[i % len(c.text)])
                self._generated += 1
                text, finish = stream.token(self.token_bytes(token), eos=token == EOS, last=i + 1 == params.max_tokens)
                yield Chunk([token], text, finish_reason=finish)
                if finish is not None:
                    return
        finally:
            self._running -= 1

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        return list(text.encode())

    def detokenize(self, token_ids: list[int]) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id]) if token_id < 256 else b""

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def max_model_len(self) -> int:
        return self.config.n_ctx

    @property
    def chat_template(self) -> ChatTemplateInfo | None:
        return ChatTemplateInfo(source=_CHATML)

    def stats(self) -> BackendStats:
        return BackendStats(
            running=self._running, max_running=self.config.max_running, weight_bytes=0, generated_tokens=self._generated
        )
