"""Self-contained HTML reports: tables and PNG figures inlined, one file to share."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; margin: 0.5em 0; }
.note { color: #555; }
"""


def table(header: Sequence[str] | None, rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def figure(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def page(title: str, sections: Sequence[tuple[str, str]], note: str = "") -> str:
    """sections: (heading, HTML body) in order."""
    parts = [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='note'>{html.escape(note)}</p>{''.join(parts)}</body></html>"
    )
