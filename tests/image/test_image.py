"""The gateway image, built by docker/build.sh (`make image-test`), started the way
the Helm chart starts its CPU engine pod: the chart is rendered, and its container's
args, environment (Secret values included), config file and model-cache volume are
handed to `buildah run`, as the user the chart runs it as. Then what a cluster would
do: wait for /ready, send a completion and a streamed chat with the official openai
client, scrape /metrics, run the image's HEALTHCHECK, and SIGTERM it mid-stream: the
stream finishes (the drain) and the process exits 0.

buildah runs the container in a chroot on the host's network (no daemon, no network
namespace), so the pod's port is a loopback port here. Root, or sudo without a
password, is needed; `make test` skips this module, `make image-test` runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from tests.chart import Container, container, named, render

IMAGE = os.environ.get("LIGHTGATE_IMAGE", "")
pytestmark = pytest.mark.skipif(not IMAGE, reason="`make image-test` builds the image and runs these (buildah, root)")

SUDO = [] if os.geteuid() == 0 else ["sudo", "-n"]
BUILDAH = [*SUDO, "buildah", "--storage-driver", "vfs"]
ENGINE_KEY = "image-test-engine-key"  # the chart's upstreamKey: the engine accepts only it
READY_TIMEOUT_S = 300


def buildah(*args: str) -> str:
    return subprocess.run([*BUILDAH, *args], capture_output=True, text=True, check=True).stdout


@dataclass
class Pod:
    spec: Container
    ctr: str  # buildah's working container
    proc: subprocess.Popen[bytes]
    url: str
    ready_s: float
    log: Path
    image_config: dict[str, object]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _argv(spec: Container, config: dict[str, object]) -> list[str]:
    """What the kubelet runs: command replaces ENTRYPOINT, args replace CMD."""
    entrypoint = spec.command if spec.command is not None else list(config.get("Entrypoint") or [])  # type: ignore[call-overload]
    cmd = spec.args if spec.args is not None else list(config.get("Cmd") or [])  # type: ignore[call-overload]
    return [*entrypoint, *cmd]


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    docs = render("--set", f"auth.upstreamKey={ENGINE_KEY}")
    engine = next(n for n in named(docs, "Deployment") if not n.endswith("-gateway"))
    spec = container(docs, engine)
    assert IMAGE.removeprefix("localhost/") == spec.image, f"built {IMAGE}, the chart runs {spec.image}"
    config = json.loads(buildah("inspect", "--type", "image", IMAGE))["Docker"]["config"]  # docker format: HEALTHCHECK
    if not _port_free(spec.port):
        pytest.fail(f"port {spec.port} (the chart's) is taken here: the image runs on the host's network")
    root = tmp_path_factory.mktemp("pod")
    mounts: list[str] = []
    for path, files in spec.files.items():  # ConfigMaps, read-only as the kubelet mounts them
        folder = root / path.strip("/").replace("/", "-")
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        folder.chmod(0o755)
        mounts += ["--volume", f"{folder}:{path}:ro"]
    for path in spec.volumes:  # emptyDir: writable by the pod's user (the kubelet makes it 0777)
        folder = root / path.strip("/").replace("/", "-")
        folder.mkdir()
        folder.chmod(0o777)
        mounts += ["--volume", f"{folder}:{path}"]
    security = spec.pod["securityContext"]
    env = [arg for key, value in spec.env.items() for arg in ("--env", f"{key}={value}")]
    ctr = buildah("from", "--quiet", "--name", f"lightgate-image-test-{os.getpid()}", IMAGE).strip()
    log = root / "pod.log"
    start = time.monotonic()
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    argv = [*BUILDAH, "run", "--isolation", "chroot", "--user", user, *env, *mounts, ctr, "--", *_argv(spec, config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{spec.port}"
    running = Pod(spec, ctr, proc, url, 0.0, log, config)
    try:
        while time.monotonic() - start < READY_TIMEOUT_S:
            if proc.poll() is not None:
                pytest.fail(f"the image exited with {proc.returncode} before it was ready:\n{running.log_tail()}")
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        else:
            pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{running.log_tail()}")
        running.ready_s = time.monotonic() - start
        print(f"\nimage {IMAGE}: start to ready {running.ready_s:.1f} s")
        yield running
    finally:
        if proc.poll() is None:
            _signal(running, signal.SIGKILL)
            proc.wait(30)
        subprocess.run([*BUILDAH, "rm", ctr], capture_output=True)


def _server_pid(pod: Pod) -> int:
    """The `lightgate serve` process inside the chroot: a descendant of `buildah run`
    (between them, buildah's own chroot helpers, which carry the same arguments)."""
    for child in psutil.Process(pod.proc.pid).children(recursive=True):
        cmdline = child.cmdline()
        if len(cmdline) > 2 and "python" in Path(cmdline[0]).name and cmdline[1].endswith("bin/lightgate"):
            return int(child.pid)
    raise AssertionError(f"no `lightgate serve` under buildah run {pod.proc.pid}")


def _signal(pod: Pod, sig: signal.Signals) -> None:
    # What the kubelet does on a pod's deletion: the signal goes to the container's process.
    try:
        pid = _server_pid(pod)
    except (AssertionError, psutil.Error):
        return
    subprocess.run([*SUDO, "kill", f"-{sig.name.removeprefix('SIG')}", str(pid)], check=True)


def _model(pod: Pod) -> str:
    """The engine's model name, from the config file the chart mounts."""
    (text,) = pod.spec.files["/etc/lightgate"].values()
    name: str = yaml.safe_load(text)["models"][0]["name"]
    return name


@pytest.fixture(scope="module")
def client(pod: Pod) -> openai.OpenAI:
    return openai.OpenAI(base_url=pod.url + "/v1", api_key=ENGINE_KEY, max_retries=0)


def test_the_image_runs_as_the_charts_user_with_its_probes(pod: Pod) -> None:
    assert httpx.get(pod.url + "/health").status_code == 200
    assert httpx.get(pod.url + "/ready").status_code == 200
    uid = pod.spec.pod["securityContext"]["runAsUser"]
    assert psutil.Process(_server_pid(pod)).uids().real == uid != 0
    assert str(pod.image_config.get("User", "")).split(":")[0] == str(uid)


def test_the_images_own_healthcheck_passes(pod: Pod) -> None:
    """The HEALTHCHECK command, run inside the image beside the server."""
    check = pod.image_config["Healthcheck"]["Test"]  # type: ignore[index]
    assert check[0] == "CMD"
    result = subprocess.run(
        [*BUILDAH, "run", "--isolation", "chroot", "--user", "10001", pod.ctr, "--", *check[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_no_compiler_came_along_to_the_final_image(pod: Pod) -> None:
    probe = "import shutil; print([c for c in ('gcc', 'cc', 'g++', 'cmake', 'make') if shutil.which(c)])"
    result = subprocess.run(
        [*BUILDAH, "run", "--isolation", "chroot", "--user", "10001", pod.ctr, "--", "python3", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_charts_fetch_init_container_runs_in_the_image(pod: Pod, tmp_path: Path) -> None:
    """With `model.fetch`, the chart runs `lightgate models fetch VARIANT` before the
    engine, as the pod's user, on the model volume: here the packaged variant, which it
    finds installed and checks (no download)."""
    docs = render("--set", "engineDefaults.model.fetch=true")
    engine = next(d for n, d in named(docs, "Deployment").items() if not n.endswith("-gateway"))
    (init,) = engine["spec"]["template"]["spec"]["initContainers"]
    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o777)
    security = engine["spec"]["template"]["spec"]["securityContext"]
    env = [arg for var in init["env"] for arg in ("--env", f"{var['name']}={var['value']}")]
    (mount,) = init["volumeMounts"]
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    volume = f"{models}:{mount['mountPath']}"
    result = subprocess.run(
        [
            *BUILDAH,
            "run",
            "--isolation",
            "chroot",
            "--user",
            user,
            *env,
            "--volume",
            volume,
            pod.ctr,
            "--",
            *init["command"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smollm2-135m-instruct-q4_1" in result.stdout + result.stderr


def test_the_embedded_model_answers_the_official_client(pod: Pod, client: openai.OpenAI) -> None:
    model = _model(pod)
    assert [m.id for m in client.models.list()] == [model]
    done = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert done.choices[0].text and done.usage is not None and done.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=16, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.AuthenticationError):  # the chart's key is the only one it takes
        openai.OpenAI(base_url=pod.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_metrics_are_scraped_from_the_image(pod: Pod, client: openai.OpenAI) -> None:
    client.completions.create(model=_model(pod), prompt="Hello", max_tokens=2)
    metrics = httpx.get(pod.url + "/metrics").text
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith("lightgate_requests_total{")
        and _model(pod) in line
        and ('outcome="stop"' in line or 'outcome="length"' in line)
    ]
    assert served and sum(float(line.rsplit(" ", 1)[1]) for line in served) >= 2, metrics[:2000]


def test_sigterm_drains_the_stream_in_flight_and_exits_zero(pod: Pod, client: openai.OpenAI) -> None:
    finish: list[str | None] = []
    first = threading.Event()

    def stream() -> None:
        text, reason = "", None
        for chunk in client.completions.create(
            model=_model(pod), prompt="Once upon a time", max_tokens=200, stream=True, extra_body={"ignore_eos": True}
        ):
            first.set()
            text += chunk.choices[0].text
            reason = chunk.choices[0].finish_reason or reason
        finish.append(reason)

    thread = threading.Thread(target=stream)
    thread.start()
    assert first.wait(60)
    _signal(pod, signal.SIGTERM)
    ready = httpx.get(pod.url + "/ready").status_code  # draining: out of the Service, still streaming
    thread.join(120)
    assert finish == ["length"], pod.log_tail()  # the stream in flight finished
    assert ready == 503
    assert pod.proc.wait(90) == 0, pod.log_tail()
    assert "SIGTERM: draining" in pod.log_tail()
