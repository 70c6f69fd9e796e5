"""One contract, every backend that runs here: each test in this folder runs once
per engine, through a real gateway and the official openai client.

- llamacpp and synthetic: the session gateway (SmolLM2 Q4_1; the no-model backend);
- transformers: SmolLM2 exported to a Hugging Face folder, on PyTorch;
- vllm: the same folder on vLLM's CPU build. It is an optional extra with its own
  CI stage; where it is not installed its tests skip, unless
  LIGHTGATE_REQUIRE_VLLM=1 (that stage) turns the skip into a failure, so a
  broken install cannot pass quietly."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from backends.base import Backend
from gateway.config import ModelConfig, Settings
from tests.conftest import FAST, SMOL
from tests.server import RunningServer, serve

ENGINES = ["llamacpp", "transformers", "synthetic", "vllm"]


@dataclass
class Engine:
    name: str
    client: openai.OpenAI
    server: RunningServer
    model: str

    @property
    def backend(self) -> Backend:
        return self.server.router.get(self.model).backend

    @property
    def has_model(self) -> bool:
        """Whether there is a model to sample from (the synthetic backend has none)."""
        return self.name != "synthetic"


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


def _own_gateway(name: str, backend: str, path: Path, options: dict[str, object]) -> Iterator[Engine]:
    settings = Settings(models=[ModelConfig(name=name, backend=backend, path=str(path), options=options)])
    with serve(settings) as server:
        yield Engine(backend, openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0), server, name)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest, gateway: RunningServer, client: openai.OpenAI) -> Iterator[Engine]:
    name = request.param
    if name == "llamacpp":
        yield Engine(name, client, gateway, SMOL)
    elif name == "synthetic":
        yield Engine(name, client, gateway, FAST)
    elif name == "transformers":
        yield from _own_gateway(
            "smollm2-pt", "transformers", request.getfixturevalue("smollm2_hf"), {"max_model_len": 512}
        )
    else:
        if importlib.util.find_spec("vllm") is None:
            if os.environ.get("LIGHTGATE_REQUIRE_VLLM") == "1":
                pytest.fail("LIGHTGATE_REQUIRE_VLLM=1 but vllm does not import: the vllm extra is broken")
            pytest.skip("vllm is not installed (pip install -e '.[vllm]'; CI runs it in its own stage)")
        options = {"max_model_len": 512, "dtype": "bfloat16"}
        yield from _own_gateway("smollm2-vllm", "vllm", request.getfixturevalue("smollm2_hf"), options)
