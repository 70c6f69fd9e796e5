"""Chat templates render as transformers renders them, and refuse as the template says."""

from __future__ import annotations

import pytest

from backends.base import ChatTemplateInfo
from gateway.chat_template import TemplateError, render

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chatml_by_hand() -> None:
    text = render(ChatTemplateInfo(CHATML), [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_special_tokens_and_tojson_are_available() -> None:
    source = "{{ bos_token }}{{ messages | tojson }}{{ eos_token }}"
    text = render(
        ChatTemplateInfo(source, "<s>", "</s>"), [{"role": "user", "content": "é"}], add_generation_prompt=False
    )
    assert text == '<s>[{"role": "user", "content": "é"}]</s>'


def test_raise_exception_becomes_a_template_error() -> None:
    source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}"
    with pytest.raises(TemplateError, match="first message must be user"):
        render(ChatTemplateInfo(source), [{"role": "assistant", "content": "x"}], add_generation_prompt=True)


def test_the_sandbox_refuses_python_internals() -> None:
    with pytest.raises(TemplateError):
        render(ChatTemplateInfo("{{ messages.__class__.__mro__ }}"), [], add_generation_prompt=False)
