"""The Helm chart as the tests see it: rendered by the real helm, and a pod's
container resolved the way the kubelet would (args, environment from values and
Secrets, files from ConfigMaps), so the image test runs exactly what the chart says."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "lightgate"

Doc = dict[str, Any]


def helm() -> str:
    path = os.environ.get("LIGHTGATE_HELM", str(ROOT / ".cache" / "tools" / "helm"))
    if not Path(path).exists():
        pytest.fail(f"no helm at {path}: run scripts/get_helm.sh (make test does)")
    return path


def render(*args: str, namespace: str = "ai") -> list[Doc]:
    out = subprocess.run(
        [helm(), "template", "lg", str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@dataclass
class Container:
    """One container of a rendered Deployment, with what the kubelet would give it."""

    image: str
    command: list[str] | None  # None: the image's ENTRYPOINT
    args: list[str] | None  # None: the image's CMD
    env: dict[str, str]
    port: int
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # mount path -> {file name: text}
    volumes: list[str] = field(default_factory=list)  # mount paths of empty volumes (emptyDir)
    pod: Doc = field(default_factory=dict)  # the pod spec, for probes and the security context
    spec: Doc = field(default_factory=dict)  # the container spec itself


def container(docs: list[Doc], deployment: str) -> Container:
    pod = named(docs, "Deployment")[deployment]["spec"]["template"]["spec"]
    spec = pod["containers"][0]
    secrets = {name: d.get("stringData", {}) for name, d in named(docs, "Secret").items()}
    maps = {name: d.get("data", {}) for name, d in named(docs, "ConfigMap").items()}
    env: dict[str, str] = {}
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    sources = {v["name"]: v for v in pod.get("volumes", [])}
    files: dict[str, dict[str, str]] = {}
    empty: list[str] = []
    for mount in spec.get("volumeMounts", []):
        volume = sources[mount["name"]]
        if "configMap" in volume:
            files[mount["mountPath"]] = maps[volume["configMap"]["name"]]
        elif "emptyDir" in volume:
            empty.append(mount["mountPath"])
        else:
            raise ValueError(f"{deployment}: the test cannot stand in for volume {volume}")
    return Container(
        image=spec["image"],
        command=spec.get("command"),
        args=spec.get("args"),
        env=env,
        port=spec["ports"][0]["containerPort"],
        files=files,
        volumes=empty,
        pod=pod,
        spec=spec,
    )
