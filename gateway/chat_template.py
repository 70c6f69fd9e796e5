"""Chat messages rendered with the model's own template (Jinja, as transformers renders
it: a sandboxed environment with `raise_exception`, `tojson` and `strftime_now`), and
the rendering split into the template's own markup and the messages' contents, so
that only the markup's control tokens become special tokens."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backends.base import ChatTemplateInfo


class TemplateError(ValueError):
    """The template refused the conversation (for example, roles that do not alternate)."""


def _raise(message: str) -> NoReturn:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def render(
    template: ChatTemplateInfo,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    try:
        return _compile(template.source).render(
            messages=messages,
            tools=tools,
            bos_token=template.bos_token,
            eos_token=template.eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except TemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the model's chat template failed: {exc}") from exc


# A message's content stands in the rendering as this marker while the template runs,
# so that where the template put each content can be found (private-use characters: no
# template writes or strips them).
_MARK = re.compile("\ue000([0-9]+)\ue001")


def render_segments(
    template: ChatTemplateInfo,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_content) pieces in order: the template's
    markup, and each message's content as it was sent. One markup piece of the whole
    rendering when the template changes contents (trims them, say) rather than
    inserting them: then the pieces cannot be told apart."""
    full = render(template, messages, add_generation_prompt=add_generation_prompt, tools=tools)
    marked = [
        {**m, "content": f"\ue000{i}\ue001"} if isinstance(m.get("content"), str) and m["content"] else m
        for i, m in enumerate(messages)
    ]
    parts = _MARK.split(render(template, marked, add_generation_prompt=add_generation_prompt, tools=tools))
    segments = [
        (part, False) if k % 2 == 0 else (str(messages[int(part)]["content"]), True) for k, part in enumerate(parts)
    ]
    if "".join(text for text, _ in segments) != full:
        return [(full, False)]
    return [(text, is_content) for text, is_content in segments if text]
