"""Backends are found by name; a configured one whose engine is missing is a clear
error naming what to install, and an unknown option is refused, not ignored."""

from __future__ import annotations

import importlib.util

import pytest

from backends import BackendUnavailable, backend_names, create_backend


def test_every_backend_of_the_product_is_registered() -> None:
    assert {"llamacpp", "transformers", "vllm", "synthetic"} <= set(backend_names())


def test_unknown_backend_names_the_installed_ones() -> None:
    with pytest.raises(BackendUnavailable, match=r"installed: .*synthetic"):
        create_backend("tensorrt", None, {})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_says_what_to_install(tmp_path: object) -> None:
    with pytest.raises(BackendUnavailable, match=r"pip install -e '\.\[vllm\]'"):
        create_backend("vllm", str(tmp_path), {})


def test_unknown_options_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic options \['itl'\]; known: .*itl_ms"):
        create_backend("synthetic", None, {"itl": 5})
