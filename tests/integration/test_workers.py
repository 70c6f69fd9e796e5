"""Engines in worker processes (`worker: true`): the real SmolLM2 on llama.cpp and
the synthetic engine, each in its own process, behind a real gateway and the
official openai client. A worker killed under load ends only its own requests, with
a clear error, and comes back; the other model never notices."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from backends.llamacpp.backend import LlamaCppConfig
from backends.worker.backend import WorkerBackend
from compressed_models.catalog import resolve
from gateway.app import create_app
from gateway.config import ModelConfig, Settings, default_model
from gateway.footprints import Footprint, FootprintStore
from gateway.router import State
from tests.conftest import SMOL
from tests.server import RunningServer, serve, wait_until

SMOL_W, SYNTH_W = "smollm2-worker", "synthetic-worker"
SMOL_PATH = str(resolve("smollm2-135m-instruct-q4_1"))


@pytest.fixture(scope="module")
def workers() -> Iterator[RunningServer]:
    smol = default_model()
    smol.name, smol.worker, smol.options = SMOL_W, True, {"n_ctx": 512, "n_parallel": 4}
    synth = ModelConfig(name=SYNTH_W, backend="synthetic", worker=True, options={"itl_ms": 10})
    with serve(Settings(models=[smol, synth]), startup_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def wclient(workers: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=workers.v1, api_key="unused", max_retries=0)


def _worker(server: RunningServer, model: str) -> WorkerBackend:
    backend = server.router.get(model).backend
    assert isinstance(backend, WorkerBackend)
    return backend


def test_a_worker_is_another_process_and_answers_as_the_engine_in_process(
    workers: RunningServer, wclient: openai.OpenAI, client: openai.OpenAI
) -> None:
    pid = _worker(workers, SMOL_W).pid
    assert pid is not None and pid != os.getpid()
    card = httpx.get(f"{workers.v1}/models/{SMOL_W}").json()
    assert card["state"] == "ready" and card["memory_bytes"] > 50 * 2**20  # the worker's own RSS: the weights
    prompt = "The capital of France is"
    ours = wclient.completions.create(model=SMOL_W, prompt=prompt, max_tokens=12, temperature=0, logprobs=2)
    theirs = client.completions.create(model=SMOL, prompt=prompt, max_tokens=12, temperature=0, logprobs=2)
    assert ours.choices[0].text == theirs.choices[0].text
    assert ours.usage is not None and theirs.usage is not None
    assert ours.usage.prompt_tokens == theirs.usage.prompt_tokens
    assert ours.choices[0].logprobs is not None and theirs.choices[0].logprobs is not None
    assert ours.choices[0].logprobs.tokens == theirs.choices[0].logprobs.tokens
    chat = wclient.chat.completions.create(
        model=SMOL_W, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices)


def test_the_memory_estimate_bounds_what_the_worker_holds(workers: RunningServer, wclient: openai.OpenAI) -> None:
    """The budget's guess before a model has run (weights, every slot's KV cells, the
    logits buffers, the libraries; and the prompt store's budget, which fills only as
    prompts come and go) must not undercount what the worker then holds, nor waste
    much of a budget: measured here 300 MiB estimated without the store, 245 MiB held."""
    wclient.completions.create(model=SMOL_W, prompt="Once upon a time", max_tokens=16, temperature=0)
    backend = _worker(workers, SMOL_W)
    estimate, held = backend.estimate_bytes(), backend.stats().running_memory_bytes
    assert estimate is not None and held is not None
    store = LlamaCppConfig(SMOL_PATH).cache_ram_mib * 2**20  # the default budget, which the test's options keep
    assert held <= estimate and estimate - store <= 1.5 * held
    assert _worker(workers, SYNTH_W).estimate_bytes() is None  # no weights: residency's flat guess


def test_what_a_worker_took_is_kept_for_the_next_gateway(workers: RunningServer, wclient: openai.OpenAI) -> None:
    """The budget's figure for a model that ran before, even under another gateway
    process, is what it measured, not the estimate (which counts the prompt store's
    whole budget, and so is well above what this worker holds)."""
    wclient.completions.create(model=SMOL_W, prompt="Once upon a time", max_tokens=16, temperature=0)
    backend = _worker(workers, SMOL_W)
    held = backend.stats().running_memory_bytes
    assert held is not None
    kept = FootprintStore(Path(os.environ["LIGHTGATE_FOOTPRINTS_FILE"]))  # the test session's file
    assert wait_until(lambda: (FootprintStore(kept.path).get(backend.footprint_key()) or Footprint(0)).host >= held, 5)
    again = default_model()  # the same model and options, loaded only when asked
    again.name, again.worker, again.load = SMOL_W, True, "on_demand"
    again.options = {"n_ctx": 512, "n_parallel": 4}
    d = create_app(Settings(models=[again])).state.router.find(SMOL_W)
    estimate = backend.estimate_bytes()
    assert d.state is State.UNLOADED and d.footprint is not None and estimate is not None
    assert held <= d.footprint.host < estimate and d.footprint.gpu == {}
    changed = default_model()  # other options: the measurement does not apply
    changed.name, changed.worker, changed.load = SMOL_W, True, "on_demand"
    changed.options = {"n_ctx": 512, "n_parallel": 2}
    assert create_app(Settings(models=[changed])).state.router.find(SMOL_W).footprint is None


def test_a_refusal_inside_the_worker_is_still_a_400_naming_the_field(wclient: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        wclient.completions.create(
            model=SYNTH_W, prompt="x", max_tokens=4, extra_body={"response_format": {"type": "json_object"}}
        )
    assert err.value.status_code == 400


def test_a_client_that_leaves_frees_the_slot_in_the_worker(workers: RunningServer, wclient: openai.OpenAI) -> None:
    backend = _worker(workers, SMOL_W)
    stream = wclient.completions.create(model=SMOL_W, prompt="Once upon a time", max_tokens=400, stream=True)
    next(iter(stream))
    assert wait_until(lambda: backend.stats().running == 1, 5)
    stream.close()
    assert wait_until(lambda: backend.stats().running == 0, 5)


def _stream(client: openai.OpenAI, model: str, tokens: int, results: list[object]) -> None:
    try:
        text, finish = "", None
        for chunk in client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=tokens, stream=True, extra_body={"ignore_eos": True}
        ):
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        results.append(finish)
    except openai.APIError as exc:
        results.append(exc)


@pytest.mark.parametrize(
    ("victim", "other", "sig"), [(SMOL_W, SYNTH_W, signal.SIGKILL), (SYNTH_W, SMOL_W, signal.SIGSEGV)]
)
def test_a_killed_worker_ends_only_its_own_requests_and_comes_back(
    workers: RunningServer, wclient: openai.OpenAI, victim: str, other: str, sig: signal.Signals
) -> None:
    backend = _worker(workers, victim)
    deployment = workers.router.get(victim)
    restarts = deployment.restarts
    # The worker's stats lag its engine by up to a heartbeat: let the last test's
    # streams show as gone, or "3 running" below could be theirs.
    assert wait_until(lambda: backend.stats().running == 0, 5)
    ours: list[object] = []
    theirs: list[object] = []
    threads = [threading.Thread(target=_stream, args=(wclient, victim, 300, ours)) for _ in range(3)]
    threads += [threading.Thread(target=_stream, args=(wclient, other, 120, theirs)) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_until(lambda: backend.stats().running == 3, 20)
    pid = backend.pid
    assert pid is not None
    os.kill(pid, sig)
    for t in threads:
        t.join(60)
    assert theirs == ["length"] * 3  # the other model's streams all completed
    assert len(ours) == 3 and all(isinstance(r, openai.APIError) for r in ours)
    assert all("restarting" in str(r) and sig.name in str(r) for r in ours), ours
    assert wait_until(lambda: deployment.state is State.READY and backend.pid not in (None, pid), 60)
    assert deployment.restarts == restarts + 1
    again = wclient.completions.create(model=victim, prompt="Hello", max_tokens=4)
    assert again.choices[0].finish_reason in ("length", "stop")
    metrics = httpx.get(workers.base_url + "/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("lightgate_engine_restarts_total") and victim in x)
    assert line.endswith(f" {restarts + 1}.0")


def test_a_request_during_a_restart_waits_for_the_new_worker(workers: RunningServer, wclient: openai.OpenAI) -> None:
    backend = _worker(workers, SYNTH_W)
    pid = backend.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: workers.router.get(SYNTH_W).state is State.RESTARTING, 5)
    card = httpx.get(f"{workers.v1}/models/{SYNTH_W}").json()
    assert card["state"] in ("restarting", "ready")  # the new worker may already be up
    done = wclient.completions.create(model=SYNTH_W, prompt="Hello", max_tokens=4)  # waits, then runs
    assert done.choices[0].finish_reason == "length"
    assert backend.pid not in (None, pid)
