"""Where a run's prompts come from: WikiText-2 passages (../shared/data, or a path),
a JSONL file, or one fixed text. Prompts are drawn in a fixed order from a seed,
so two servers loaded with the same options get the same requests."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

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
