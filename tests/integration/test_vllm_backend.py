"""What is particular to the vllm backend, on vLLM's CPU build with SmolLM2 exported
to a Hugging Face folder (the contract itself, a client that leaves included, is
tests/conformance/): engine options go to vLLM as they are, the scheduler's figures
reach `stats()`, and a dead engine core is a 503. Runs in `make test-vllm`; skips
(or, with LIGHTGATE_REQUIRE_VLLM=1, fails) where vLLM is absent."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import ModelConfig, Settings
from tests.server import RunningServer, serve, wait_until

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("LIGHTGATE_REQUIRE_VLLM") == "1":
        raise RuntimeError("LIGHTGATE_REQUIRE_VLLM=1 but vllm does not import: the vllm extra is broken")
    pytest.skip("vllm is not installed (make test-vllm)", allow_module_level=True)

MODEL = "smollm2-vllm"


@pytest.fixture(scope="module")
def vllm_gateway(smollm2_hf: Path) -> Iterator[RunningServer]:
    options = {"max_model_len": 512, "dtype": "bfloat16", "max_num_seqs": 4, "enforce_eager": True}
    settings = Settings(models=[ModelConfig(name=MODEL, backend="vllm", path=str(smollm2_hf), options=options)])
    with serve(settings, startup_s=300) as server:
        yield server


def test_unknown_engine_options_are_refused_naming_vllms_own(smollm2_hf: Path) -> None:
    from backends.vllm.backend import engine_args

    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        engine_args(str(smollm2_hf), {"max_model_lenn": 512})
    args = engine_args(str(smollm2_hf), {"max_model_len": 256, "enforce_eager": True, "cpu_kv_cache_gib": 2})
    assert (args.max_model_len, args.enforce_eager, args.model) == (256, True, str(smollm2_hf))


def test_options_reach_the_engine_and_stats_follow_the_scheduler(vllm_gateway: RunningServer) -> None:
    backend = vllm_gateway.router.get(MODEL).backend
    assert backend.max_model_len == 512
    assert backend.stats().max_running == 4  # max_num_seqs went to vLLM's scheduler
    seen: list[tuple[int, float | None]] = []
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 64, "ignore_eos": True}

    def watch() -> None:
        while len(seen) < 400:
            stats = backend.stats()
            seen.append((stats.running, stats.kv_cache_usage))

    watcher = threading.Thread(target=watch)
    watcher.start()
    r = httpx.post(vllm_gateway.v1 + "/completions", json=body, timeout=120)
    watcher.join()
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 64
    assert any(running == 1 and (kv or 0) > 0 for running, kv in seen)  # it ran, holding KV blocks
    assert wait_until(lambda: backend.stats().running == 0, timeout=10)
    stats = backend.stats()
    assert stats.weight_bytes and stats.weight_bytes > 100e6  # SmolLM2's bf16 safetensors
    assert stats.running_memory_bytes and stats.running_memory_bytes > stats.weight_bytes


def test_when_vllms_engine_core_dies_the_model_answers_503_and_liveness_fails(smollm2_hf: Path) -> None:
    """vLLM's engine-core process killed mid-stream: the stream ends with an
    engine_dead error event instead of hanging, later requests get 503, and /ready
    and /health fail so that a supervisor restarts the gateway. Its own gateway:
    the engine does not come back."""
    import psutil

    def children() -> dict[int, psutil.Process]:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}

    before = children()
    options = {"max_model_len": 512, "dtype": "bfloat16", "max_num_seqs": 2, "enforce_eager": True}
    settings = Settings(models=[ModelConfig(name="doomed", backend="vllm", path=str(smollm2_hf), options=options)])
    with serve(settings, startup_s=300) as server:
        ours = [p for pid, p in children().items() if pid not in before]
        cores = [p for p in ours if "EngineCore" in " ".join(p.cmdline())]
        assert cores, [p.cmdline() for p in ours]
        body = {"model": "doomed", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", server.v1 + "/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = (line for line in r.iter_lines() if line)
            assert next(lines).startswith("data: {")  # it is streaming: now the engine dies
            for core in cores:
                core.kill()
            rest = list(lines)
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "engine_dead")
        after = httpx.post(server.v1 + "/completions", json={**body, "stream": False}, timeout=30)
        assert after.status_code == 503 and after.json()["error"]["code"] == "model_not_ready"
        assert httpx.get(server.base_url + "/ready").status_code == 503
        assert httpx.get(server.base_url + "/health").json() == {"status": "engine_dead", "models": ["doomed"]}
