"""The Helm chart, with the real helm (scripts/get_helm.sh; `make test` fetches it):
lint, render with the default values and the multi-model example, validate every
manifest offline against Kubernetes' own schemas, and load the rendered configs
with the gateway's real config loader, so that chart and code cannot drift."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from backends import backend_names
from backends.openai.backend import OpenAIUpstreamBackend
from compressed_models import catalog
from gateway.config import load_settings
from gateway.residency import gpu_budget_bytes, parse_bytes
from gateway.router import build_deployment
from gateway.tenants import read_tenants_file
from tests.chart import CHART, ROOT, helm, named, render

EXAMPLE = ROOT / "helm" / "examples" / "multi-model.yaml"
KUBERNETES = "1.31.0"  # the helm and kubectl the chart is tested with are v1.31's
VALUES = {"default": [], "multi-model": ["-f", str(EXAMPLE)]}


@pytest.mark.parametrize("values", VALUES)
def test_lint(values: str) -> None:
    result = subprocess.run([helm(), "lint", str(CHART), *VALUES[values]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VALUES)
def test_every_manifest_is_valid_kubernetes(values: str) -> None:
    docs = render(*VALUES[values])
    custom = {"ScaledObject", "ServiceMonitor"}  # CRDs: Kubernetes' schemas do not have them
    for doc in docs:
        if doc["kind"] not in custom:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    # The CRDs point at what the chart rendered.
    deployments = named(docs, "Deployment")
    for scaled in named(docs, "ScaledObject").values():
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
        assert all("lightgate_" in t["metadata"]["query"] for t in scaled["spec"]["triggers"])
    for monitor in named(docs, "ServiceMonitor").values():
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        matched = [s for s in named(docs, "Service").values() if wanted <= s["metadata"]["labels"].items()]
        assert len(matched) == len(named(docs, "Service"))  # the gateway and every engine are scraped


@pytest.mark.parametrize("values", VALUES)
def test_the_gateway_config_loads_and_points_at_the_engines(values: str, tmp_path: Path) -> None:
    docs = render(*VALUES[values], namespace="prod")
    configs = named(docs, "ConfigMap")
    gateway_file = tmp_path / "gateway.yaml"
    gateway_file.write_text(configs["lg-lightgate-gateway"]["data"]["lightgate.yaml"])
    settings = load_settings(gateway_file)
    services = named(docs, "Service")
    engine_services = {
        f"{n}.prod.svc:{s['spec']['ports'][0]['port']}" for n, s in services.items() if n != "lg-lightgate"
    }
    assert all(s["spec"]["clusterIP"] == "None" for n, s in services.items() if n != "lg-lightgate")  # headless
    routes: dict[str, set[str]] = {}  # engine Service -> the model names the gateway asks it for
    for model in settings.models:
        backend = build_deployment(model).backend  # the real backend checks every option
        assert isinstance(backend, OpenAIUpstreamBackend) and backend.config.resolve_dns
        (url,) = backend.config.upstreams
        routes.setdefault(url.removeprefix("http://"), set()).add(backend.config.upstream_model or model.name)
    assert set(routes) == engine_services  # every engine Service, and nothing else

    # Each Lightgate engine's own config loads too, on backends and variants that exist,
    # and serves every name the gateway sends it (an engine's variants included).
    for name, cm in configs.items():
        if name in ("lg-lightgate-gateway", "lg-lightgate-dashboard"):
            continue
        engine_file = tmp_path / f"{name}.yaml"
        engine_file.write_text(cm["data"]["lightgate.yaml"])
        engine = load_settings(engine_file)
        for model in engine.models:
            assert model.backend in backend_names()
            assert model.variant is None or model.variant in catalog.names()
        port = services[name]["spec"]["ports"][0]["port"]
        assert routes[f"{name}.prod.svc:{port}"] == {m.name for m in engine.models}
        if len(engine.models) > 1:  # variants: workers under the pod's budget, the first loaded at start
            assert engine.memory_budget is not None and parse_bytes(engine.memory_budget) > 0
            assert all(m.worker for m in engine.models)
            assert [m.load for m in engine.models] == ["startup"] + ["on_demand"] * (len(engine.models) - 1)


@pytest.mark.parametrize("values", VALUES)
def test_probes_and_drain_budget(values: str) -> None:
    docs = render(*VALUES[values])
    configs = named(docs, "ConfigMap")
    for name, deployment in named(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] in ("/health", "/ready"), (name, probe)
        config = configs.get(name)  # a Lightgate pod's config has the deployment's name
        if config is not None:  # Kubernetes waits longer than the drain
            drain = yaml.safe_load(config["data"]["lightgate.yaml"])["drain_timeout_s"]
            assert pod["terminationGracePeriodSeconds"] > drain
        if deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "engine":
            startup = container["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a model load's budget


def test_gpu_engines_ask_for_gpus() -> None:
    docs = render(*VALUES["multi-model"])
    qwen = named(docs, "Deployment")["lg-lightgate-qwen2-5-coder-1-5b"]["spec"]["template"]["spec"]
    assert qwen["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert qwen["tolerations"][0]["key"] == "nvidia.com/gpu"
    engine_config = yaml.safe_load(
        named(docs, "ConfigMap")["lg-lightgate-qwen2-5-coder-1-5b"]["data"]["lightgate.yaml"]
    )
    assert engine_config["models"][0]["options"]["tensor_parallel_size"] == 2


@pytest.mark.parametrize(
    "override",
    [
        ["--set", "engines[0].routing=random"],
        ["--set", "gateway.port=0"],
        ["--set", "engines[0].server=openai"],  # an external server needs its args
        ["--set", "engineDefaults.keda.kvCacheThreshold=2"],
    ],
)
def test_the_schema_refuses_bad_values(override: list[str]) -> None:
    result = subprocess.run(
        [helm(), "template", "lg", str(CHART), *override], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr


def test_the_dashboard_in_the_chart_is_the_dashboard() -> None:
    shipped = (CHART / "files" / "lightgate-dashboard.json").read_text()
    assert shipped == (ROOT / "deploy" / "grafana" / "lightgate.json").read_text()
    docs = render("--set", "metrics.grafanaDashboard.enabled=true")
    dashboard = named(docs, "ConfigMap")["lg-lightgate-dashboard"]
    assert json.loads(dashboard["data"]["lightgate.json"]) == json.loads(shipped)


def test_tenants_are_a_mounted_secret_file_the_gateway_loads(tmp_path: Path) -> None:
    key = "sha256:" + "ab" * 32
    docs = render("--set-json", f'auth.tenants=[{{"name":"acme","key":"{key}","requests_per_minute":60}}]')
    for doc in docs:
        if doc["kind"] in ("Secret", "Deployment", "ConfigMap"):
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    config = yaml.safe_load(named(docs, "ConfigMap")["lg-lightgate-gateway"]["data"]["lightgate.yaml"])
    mounted = next(d for d in named(docs, "Deployment").values() if "tenants" in str(d))
    volume = next(v for v in mounted["spec"]["template"]["spec"]["volumes"] if v["name"] == "tenants")
    (container,) = mounted["spec"]["template"]["spec"]["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tenants")
    assert config["tenants_file"] == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    # The Secret's file is what the gateway reads, key and limits as given.
    secret = named(docs, "Secret")["lg-lightgate-keys"]
    path = tmp_path / "tenants.yaml"
    path.write_text(secret["stringData"]["gateway-tenants"])
    (tenant,) = read_tenants_file(path)
    assert tenant.name == "acme" and tenant.key == key and tenant.requests_per_minute == 60
    # Without tenants, nothing is mounted and no file is named.
    plain = yaml.safe_load(named(render(), "ConfigMap")["lg-lightgate-gateway"]["data"]["lightgate.yaml"])
    assert "tenants_file" not in plain


def test_a_gpu_budget_reaches_each_lightgate_engines_config(tmp_path: Path) -> None:
    docs = render("-f", str(EXAMPLE), "--set-string", "engineDefaults.gpuMemoryBudget=70Gi")
    engines = [cm for name, cm in named(docs, "ConfigMap").items() if not name.endswith(("-gateway", "-dashboard"))]
    assert engines
    for cm in engines:
        engine_file = tmp_path / "engine.yaml"
        engine_file.write_text(cm["data"]["lightgate.yaml"])
        budget = load_settings(engine_file).gpu_memory_budget
        assert budget is not None and gpu_budget_bytes(budget, 2) == {0: 70 * 2**30, 1: 70 * 2**30}
