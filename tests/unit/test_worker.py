"""The pieces of engine workers that need no process: how a death is described, what
crosses the pipe intact, and which models may have a worker."""

from __future__ import annotations

import pickle
import signal

import pytest

from backends.base import BackendStats, Chunk, EngineRestarting, TokenLogprob, TopLogprob, UnsupportedFeature
from backends.worker import wire
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


def test_a_step_crosses_the_wire_whole() -> None:
    """msgpack carries a step's chunks (logprobs, the prompt's, the finish) and pickle
    what is rare inside it (a request's failure, the stats); the gateway rebuilds the
    same objects."""
    top = (TopLogprob(7, b" a", -0.1), TopLogprob(8, b"\xe2\x82", -2.5))  # bytes of half a character
    chunk = Chunk([7], " a", [TokenLogprob(7, b" a", -0.1, top)], "length", [TokenLogprob(1, b"<s>", None)])
    refusal = UnsupportedFeature("no logprobs here", "logprobs")
    stats = BackendStats(running=2, waiting=1, max_running=4, kv_cache_usage=0.25)
    kind, items, back_stats = wire.decode(wire.encode_step([(3, chunk), (4, Chunk([], "")), (5, refusal)], stats))
    assert kind == "step" and back_stats == stats
    assert items[0] == (3, chunk) and items[1] == (4, Chunk([], ""))
    assert items[2][0] == 5 and isinstance(items[2][1], UnsupportedFeature) and items[2][1].param == "logprobs"
    assert wire.decode(wire.encode_step([], None)) == ("step", [], None)
    assert wire.decode(wire.encode_other(("stats", stats))) == ("stats", stats)
