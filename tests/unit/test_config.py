"""Configuration: YAML file, LIGHTGATE_* environment, command-line flags, in that order of strength."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import DEFAULT_MODEL_NAME, Settings, load_settings


def test_no_config_serves_the_embedded_default() -> None:
    s = load_settings()
    [model] = s.models
    assert model.name == DEFAULT_MODEL_NAME and model.backend == "llamacpp"
    assert model.variant == "smollm2-135m-instruct-q4_1"


def test_yaml_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "lightgate.yaml"
    config.write_text(
        "port: 9000\nhost: 0.0.0.0\nmodels:\n"
        "  - name: a\n    aliases: [b]\n    backend: synthetic\n    options: {itl_ms: 5}\n    max_queue: 3\n"
    )
    s = load_settings(config)
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    assert s.models[0].options == {"itl_ms": 5} and s.models[0].max_queue == 3
    monkeypatch.setenv("LIGHTGATE_PORT", "9100")
    assert load_settings(config).port == 9100  # the environment beats the file
    assert load_settings(config, port=9200).port == 9200  # a flag beats both


def test_names_and_aliases_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="used twice"):
        Settings.model_validate({"models": [{"name": "a"}, {"name": "b", "aliases": ["a"]}]})


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(config)


def test_serve_refuses_a_missing_model_file_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["serve", "--model", "/nonexistent/model.gguf", "--port", "1"]) == 2
    assert "model file not found: /nonexistent/model.gguf" in capsys.readouterr().err


def test_serve_refuses_unknown_backend_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("models:\n  - name: s\n    backend: synthetic\n    options: {warp_speed: 9}\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "unknown synthetic options ['warp_speed']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["eval", "ppl", "smollm2-135m-instruct-q4_1", "--text", "/no/such/text"], "No such file"),
        (["models", "show", "no-such-variant"], "no catalog entry 'no-such-variant'"),
        (["bench", "run", "--base-url", "http://127.0.0.1:1"], "connect"),  # no --model: /v1/models unreachable
    ],
)
def test_other_commands_fail_in_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightgate: ") and says.lower() in err.lower() and "Traceback" not in err


def test_tenants_from_the_environment_are_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTGATE_TENANTS", '[{"name": "acme", "key": "sk-acme-1", "requests_per_minute": 60}]')
    tenant = load_settings().tenants[0]
    assert tenant.name == "acme" and tenant.requests_per_minute == 60
    assert tenant.key.startswith("sha256:") and "sk-acme-1" not in tenant.model_dump_json()
