"""Where the evaluation and calibration text is: WikiText-2 raw, the text of
llama.cpp's perplexity tool and of the GPTQ protocol. LIGHTGATE_WIKITEXT names its
wiki.test.raw; by default the repository's sibling `shared/data`, where the project
keeps it (the load tester finds its prompts the same way, loadtest/prompts.py)."""

from __future__ import annotations

import os
from pathlib import Path

WIKITEXT = Path(
    os.environ.get("LIGHTGATE_WIKITEXT")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
)
WIKITEXT_VALID = WIKITEXT.with_name("wiki.valid.raw")  # calibration: never the text that is scored
