"""The pieces of engine workers that need no process: how a death is described, what
crosses the pipe intact, and which models may have a worker."""

from __future__ import annotations

import pickle
import signal

import pytest

from backends.base import EngineRestarting, UnsupportedFeature
from backends.worker.backend import exit_reason
from backends.worker.child import _portable
from gateway.config import ModelConfig
from gateway.router import build_deployment


def test_a_death_is_named_by_its_signal_or_exit_code() -> None:
    assert exit_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_reason(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert exit_reason(3) == "exit code 3"
    assert exit_reason(None) == "it stopped answering"


def test_a_refusal_keeps_the_field_it_names_across_the_pipe() -> None:
    back = pickle.loads(pickle.dumps(UnsupportedFeature("no logprobs here", "logprobs")))
    assert isinstance(back, UnsupportedFeature) and back.param == "logprobs" and str(back) == "no logprobs here"


def test_an_engine_failure_crosses_as_an_engine_error_naming_its_type() -> None:
    sent = pickle.loads(pickle.dumps(_portable(KeyError("slot"))))
    assert type(sent).__name__ == "BackendError" and "KeyError" in str(sent)
    assert isinstance(_portable(UnsupportedFeature("x", "n")), UnsupportedFeature)
    assert isinstance(_portable(EngineRestarting("gone")), EngineRestarting)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(name="up", backend="openai", worker=True, options={"upstreams": ["http://127.0.0.1:9"]}),
        ModelConfig(name="emb", backend="synthetic", task="embed", worker=True),
    ],
)
def test_a_worker_is_only_for_token_engines_that_generate(config: ModelConfig) -> None:
    with pytest.raises(Exception, match="worker"):
        build_deployment(config)
