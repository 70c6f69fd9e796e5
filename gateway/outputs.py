"""What one sequence produced, gathered from its chunks, and its logprobs in the two
OpenAI shapes (the legacy completions table and chat's per-token list)."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.base import Chunk, FinishReason, TokenLogprob
from gateway.protocol import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprobOut, Usage


@dataclass(slots=True)
class SequenceOutput:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None

    def add(self, chunk: Chunk) -> None:
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        if chunk.logprobs:
            self.logprobs.extend(chunk.logprobs)
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    @property
    def cumulative_logprob(self) -> float:
        return sum(e.logprob or 0.0 for e in self.logprobs)


def usage(prompt_tokens: int, outputs: list[SequenceOutput]) -> Usage:
    """Every generated token counts, discarded best_of candidates included: the engine made them."""
    completion_tokens = sum(len(o.token_ids) for o in outputs)
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def token_str(token: bytes) -> str:
    """A token as text; a token that splits a UTF-8 character is written as OpenAI
    writes it, `bytes:\\xNN...`."""
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in token)


def completion_logprobs(entries: list[TokenLogprob], text_offset: int = 0) -> CompletionLogprobs:
    """The legacy table. `top_logprobs` holds the k most likely tokens and the chosen
    one, as OpenAI documents; the first prompt token has no logprob and no table."""
    out = CompletionLogprobs()
    for e in entries:
        text = token_str(e.token)
        out.tokens.append(text)
        out.token_logprobs.append(e.logprob)
        if e.logprob is None:
            out.top_logprobs.append(None)
        else:
            table = {token_str(t.token): t.logprob for t in e.top}
            table.setdefault(text, e.logprob)
            out.top_logprobs.append(table)
        out.text_offset.append(text_offset)
        text_offset += len(text)
    return out


def chat_logprobs(entries: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=token_str(e.token),
                logprob=e.logprob if e.logprob is not None else 0.0,
                bytes=list(e.token),
                top_logprobs=[
                    TopLogprobOut(token=token_str(t.token), logprob=t.logprob, bytes=list(t.token)) for t in e.top
                ],
            )
            for e in entries
        ]
    )
