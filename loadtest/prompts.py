"""Where a run's prompts come from: WikiText-2 passages (../shared/data, or a path),
slices of them of exact lengths in the served model's tokens, a JSONL file, or one
fixed text. Prompts are drawn in a fixed order from a seed,
so two servers loaded with the same options get the same requests."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.client import Prompt

# LIGHTGATE_WIKITEXT, else the repository's sibling `shared/data`, where the project keeps WikiText-2.
WIKITEXT = Path(
    os.environ.get("LIGHTGATE_WIKITEXT")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
)


@dataclass(slots=True)
class PromptSource:
    prompts: list[Prompt]
    name: str

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"no prompts in {self.name}")

    def get(self, index: int) -> Prompt:
        """The index-th request's prompt; the list repeats when a run outlasts it."""
        return self.prompts[index % len(self.prompts)]


def fixed(text: str) -> PromptSource:
    return PromptSource([Prompt(text)], "fixed text")


def wikitext(words: int, path: Path = WIKITEXT, seed: int = 0, count: int = 1000) -> PromptSource:
    """Passages of about `words` words, each starting at a paragraph of WikiText-2."""
    if not path.is_file():
        raise FileNotFoundError(
            f"WikiText-2 not found at {path}: give its wiki.test.raw with --wikitext (or LIGHTGATE_WIKITEXT), "
            "or prompts with --jsonl or --prompt"
        )
    # Paragraphs only: skip headings (" = Title = ") and blank lines.
    paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n") if p.strip()]
    paragraphs = [p for p in paragraphs if not p.startswith("=")]
    text = " ".join(paragraphs).split()
    starts = [i for i, word in enumerate(text[: max(1, len(text) - words)]) if word.endswith(".")]
    rng = random.Random(seed)
    chosen = rng.sample(starts, min(count, len(starts)))
    return PromptSource([Prompt(" ".join(text[i + 1 : i + 1 + words])) for i in chosen], f"WikiText-2, {words} words")


def jsonl(path: Path) -> PromptSource:
    """One JSON object per line with a "prompt" (or "text") field; "prompt_tokens" if known."""
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        text = row.get("prompt", row.get("text"))
        if not isinstance(text, str):
            raise ValueError(f"{path}:{n}: no string 'prompt' or 'text' field")
        prompts.append(Prompt(text, row.get("prompt_tokens")))
    return PromptSource(prompts, str(path))


def token_lengths(mean: int, stdev: float, count: int, seed: int = 0) -> list[int]:
    """Prompt lengths drawn from a normal distribution (at least 1 token each)."""
    rng = random.Random(seed)
    return [max(1, round(rng.gauss(mean, stdev))) if stdev else mean for _ in range(count)]


def of_token_lengths(
    client: httpx.Client, model: str, lengths: list[int], corpus: PromptSource, seed: int = 0
) -> PromptSource:
    """Prompts of exactly the given lengths in the served model's own tokens: slices
    of the corpus's token stream, from the server's /tokenize, turned back into text
    by its /detokenize (vLLM and Lightgate both have them). A length counts the
    tokens the server will see, as its usage.prompt_tokens does, BOS included."""
    text = " ".join(p.text for p in corpus.prompts[:200])
    stream = _post(client, "/tokenize", {"model": model, "prompt": text})["tokens"]
    bos = _post(client, "/tokenize", {"model": model, "prompt": ""})["tokens"]  # what every prompt starts with
    body = stream[len(bos) :] if stream[: len(bos)] == bos else stream
    rng = random.Random(seed)
    prompts = []
    for n in lengths:
        want = n - len(bos)
        if not 0 < want <= len(body):
            raise ValueError(f"a {n}-token prompt does not fit the corpus' {len(body)} tokens")
        start = rng.randrange(0, len(body) - want + 1)
        words = _post(client, "/detokenize", {"model": model, "tokens": body[start : start + want]})["prompt"]
        prompts.append(Prompt(words, n))
    return PromptSource(prompts, f"{corpus.name}, token lengths {min(lengths)}-{max(lengths)}")


def _post(client: httpx.Client, path: str, body: dict[str, object]) -> dict[str, Any]:
    response = client.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(
            f"{path} answered {response.status_code}: the server cannot count tokens for us "
            "(use --wikitext-words or --jsonl instead of --prompt-tokens)"
        )
    data: dict[str, Any] = response.json()
    return data
