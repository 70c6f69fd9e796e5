"""One contract, every backend that runs here: each test in this folder runs once
per engine, through a real gateway and the official openai client.

- llamacpp and synthetic: the session gateway (SmolLM2 Q4_1; the no-model backend);
- llamacpp-worker: SmolLM2 on llama.cpp in a worker process (`worker: true`), so the
  whole contract holds across the process boundary;
- transformers: SmolLM2 exported to a Hugging Face folder, on PyTorch;
- vllm: the same folder on vLLM's CPU build. It is an optional extra with its own
  CI stage; where it is not installed its tests skip, unless
  LIGHTGATE_REQUIRE_VLLM=1 (that stage) turns the skip into a failure, so a
  broken install cannot pass quietly.

On a GPU machine (scripts/gpu_check.sh) LIGHTGATE_CONFORMANCE picks other engines:
`exllamav2` (SmolLM2 converted to EXL2 there), `transformers` (on CUDA, which it
picks by itself) and `llamacpp-gpu` (every layer offloaded)."""

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

ENGINES = os.environ.get("LIGHTGATE_CONFORMANCE", "llamacpp,llamacpp-worker,transformers,synthetic,vllm").split(",")


@dataclass
class Engine:
    name: str
    client: openai.OpenAI
    server: RunningServer
    model: str

    @property
    def backend(self) -> Backend:
        return self.server.router.get(self.model).engine

    @property
    def has_model(self) -> bool:
        """Whether there is a model to sample from (the synthetic backend has none)."""
        return self.name != "synthetic"


@pytest.fixture(scope="session")
def smollm2_exl2(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted to EXL2 at 4 bits per weight (CUDA only)."""
    from compressed_models import catalog
    from compressed_models.gpu_recipes import quantize_exl2

    mp = pytest.MonkeyPatch()
    mp.setenv("LIGHTGATE_CACHE", str(smollm2_hf.parents[1]))  # the export's cache: its catalog entry is there
    try:
        return catalog.resolve(quantize_exl2(smollm2_hf.name, 4.0))
    finally:
        mp.undo()


def _own_gateway(
    name: str, backend: str, path: Path, options: dict[str, object], worker: bool = False
) -> Iterator[Engine]:
    model = ModelConfig(name=name, backend=backend, path=str(path), options=options, worker=worker)
    settings = Settings(models=[model])
    with serve(settings, startup_s=300) as server:  # vLLM on a CPU takes a minute or two
        label = f"{backend}-worker" if worker else backend
        yield Engine(label, openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0), server, name)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    name = request.param
    if name in ("llamacpp", "synthetic"):  # asked for lazily: the vllm stage has no llama.cpp
        gateway, client = request.getfixturevalue("gateway"), request.getfixturevalue("client")
        yield Engine(name, client, gateway, SMOL if name == "llamacpp" else FAST)
    elif name == "transformers":
        yield from _own_gateway(
            "smollm2-pt", "transformers", request.getfixturevalue("smollm2_hf"), {"max_model_len": 512}
        )
    elif name == "llamacpp-worker":  # the same engine behind a process boundary (worker: true)
        from compressed_models import catalog

        gguf = catalog.resolve("smollm2-135m-instruct-q4_1")
        yield from _own_gateway("smollm2-worker", "llamacpp", gguf, {"n_ctx": 512}, worker=True)
    elif name == "llamacpp-gpu":
        from compressed_models import catalog

        gguf = catalog.resolve("smollm2-135m-instruct-q4_1")
        yield from _own_gateway("smollm2-gpu", "llamacpp", gguf, {"n_ctx": 512, "n_gpu_layers": -1})
    elif name == "exllamav2":
        yield from _own_gateway(
            "smollm2-exl2", "exllamav2", request.getfixturevalue("smollm2_exl2"), {"max_seq_len": 512}
        )
    else:
        if importlib.util.find_spec("vllm") is None:
            if os.environ.get("LIGHTGATE_REQUIRE_VLLM") == "1":
                pytest.fail("LIGHTGATE_REQUIRE_VLLM=1 but vllm does not import: the vllm extra is broken")
            pytest.skip("vllm is not installed (pip install -e '.[vllm]'; CI runs it in its own stage)")
        # enforce_eager: no torch.compile warm-up (minutes on 2 cores); the benchmark compiles.
        options = {"max_model_len": 512, "dtype": "bfloat16", "enforce_eager": True}
        yield from _own_gateway("smollm2-vllm", "vllm", request.getfixturevalue("smollm2_hf"), options)
