"""The README's examples work as written (pointed at the test server's port)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import httpx

from backends import backend_names
from gateway.config import load_settings
from tests.server import RunningServer

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_openai_streaming_example(gateway: RunningServer) -> None:
    [code] = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert "http://127.0.0.1:8000/v1" in code
    code = code.replace("http://127.0.0.1:8000", gateway.base_url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert len(out.getvalue().strip()) > 0


def test_the_curl_example(gateway: RunningServer) -> None:
    [command] = re.findall(r"```sh\n(curl .*?)\n```", README, flags=re.S)
    words = shlex.split(command.replace("\\\n", " "))
    url = words[1].replace("localhost:8000", gateway.base_url)
    body = json.loads(words[words.index("-d") + 1])
    r = httpx.post(url, json=body)
    assert r.status_code == 200
    [choice] = r.json()["choices"]  # sampled at temperature 1: any text of the model's
    assert choice["text"] and choice["finish_reason"] in {"length", "stop"}


def test_the_config_examples_are_valid_configs(tmp_path: Path) -> None:
    full, *others = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    path = tmp_path / "lightgate.yaml"
    path.write_text(full)
    settings = load_settings(path)
    assert [m.name for m in settings.models] == ["smollm2-135m", "synthetic"]
    assert settings.metrics and settings.access_log and not settings.log_prompts
    path.write_text(others[0])  # the other engines' models
    backends = {m.backend for m in load_settings(path).models}
    assert backends == {"transformers", "vllm", "speculative", "exllamav2", "tensorrt_llm"}
    assert backends <= set(backend_names())  # each one the gateway knows by that name


def test_the_readme_and_the_architecture_page_name_every_registered_backend() -> None:
    architecture = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    for name in backend_names():
        assert f"`{name}`" in README, f"README.md does not name the {name} backend"
        assert f"`{name}`" in architecture, f"docs/architecture.md does not name the {name} backend"
