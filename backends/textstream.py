"""Turns a stream of token bytes into text deltas, holding back what a stop string
or a split UTF-8 character might still claim. Shared by every backend that samples
tokens itself."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from backends.base import FinishReason


@dataclass(slots=True)
class TextStream:
    stop: list[str] = field(default_factory=list)
    text: str = ""  # everything released so far
    stopped: bool = False
    _pending: str = ""
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def push(self, token: bytes) -> str:
        """Add one token's bytes; return the text that is now certain."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(token)
        return self._release(final=False)

    def token(self, piece: bytes, *, eos: bool, last: bool) -> tuple[str, FinishReason | None]:
        """A sampled token: the text it releases, and whether the sequence ends with
        it (EOS, a stop string, or `last`: max_tokens or the context reached)."""
        if eos:
            return self.flush(), "stop"
        text = self.push(piece)
        if self.stopped:
            return text, "stop"
        if last:
            return text + self.flush(), "length"
        return text, None

    def flush(self) -> str:
        """The sequence ended: release whatever was held back."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        hit = self._first_stop()
        if hit is not None:
            out = self._pending[:hit]
            self._pending = ""
            self.stopped = True
        else:
            keep = 0 if final else self._held_suffix()
            out = self._pending[: len(self._pending) - keep]
            self._pending = self._pending[len(self._pending) - keep :]
        self.text += out
        return out

    def _first_stop(self) -> int | None:
        # A stop string may begin in text already released only if it was held back,
        # so searching the pending text (which starts where holding began) suffices.
        found = [i for s in self.stop if (i := self._pending.find(s)) >= 0]
        return min(found) if found else None

    def _held_suffix(self) -> int:
        """Length of the longest tail of pending text that begins some stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:k]):
                    longest = k
                    break
        return longest
