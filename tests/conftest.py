"""Shared fixtures: one real gateway for the whole session, serving the real SmolLM2
model on llama.cpp and two synthetic models for gateway-only behaviour."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.config import ModelConfig, Settings, default_model
from tests.server import RunningServer, serve

# Footprints measured by this session's gateways go to a file of its own: a developer's
# cache, or a run before, must not change what a test's memory budget decides.
os.environ["LIGHTGATE_FOOTPRINTS_FILE"] = str(Path(tempfile.mkdtemp(prefix="lightgate-test-")) / "footprints.json")

SMOL = "smollm2-135m"
QWEN = "qwen"  # Qwen2.5-Coder-0.5B-Instruct: tools, the Responses API, fill-in-the-middle
FAST = "synthetic-fast"  # no delays: the gateway alone
SLOW = "synthetic-slow"  # one slot, one queue place, 20 ms per token: queueing and disconnects
FAILING = "synthetic-failing"  # the engine fails after 3 tokens


def gateway_settings() -> Settings:
    smol = default_model()
    smol.aliases = ["smol"]
    smol.options = {"n_ctx": 512}
    return Settings(
        models=[
            smol,
            ModelConfig(name=FAST, backend="synthetic"),
            ModelConfig(
                name=SLOW,
                backend="synthetic",
                options={"ttft_ms": 20, "itl_ms": 20},
                max_running=1,
                max_queue=1,
            ),
            ModelConfig(name=FAILING, backend="synthetic", options={"fail_after_tokens": 3}),
        ]
    )


@pytest.fixture(scope="session")
def gateway() -> Iterator[RunningServer]:
    with serve(gateway_settings()) as server:
        yield server


@pytest.fixture(scope="session")
def qwen_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Qwen2.5-Coder-0.5B-Instruct, a model trained on tool calls and fill-in-the-middle,
    loaded once for every module that needs it; its stored responses in a fresh file."""
    model = ModelConfig(
        name=QWEN,
        backend="llamacpp",
        variant="qwen2.5-coder-0.5b-instruct-q4_k_m",
        options={"n_ctx": 2048, "n_parallel": 2},
    )
    db = tmp_path_factory.mktemp("responses") / "responses.sqlite"
    with serve(Settings(models=[model], responses_db=str(db)), startup_s=180) as server:
        yield server


@pytest.fixture(scope="session")
def client(gateway: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def smollm2_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 Q4_1 as a Hugging Face folder (`lightgate models export-hf`)."""
    from gateway.cli import main as lightgate

    mp = pytest.MonkeyPatch()
    mp.setenv("LIGHTGATE_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    try:
        assert lightgate(["models", "export-hf", "smollm2-135m-instruct-q4_1"]) == 0
        from compressed_models import catalog

        return catalog.resolve("smollm2-135m-instruct-bf16-from-q4_1")
    finally:
        mp.undo()
