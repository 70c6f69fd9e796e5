"""A deployment: its kind, its one state and the moves between states, and the
router's turning of catalog names into paths before a backend is constructed."""

from __future__ import annotations

import pytest

from backends.base import Kind
from compressed_models.catalog import resolve
from gateway.config import ModelConfig
from gateway.router import Router, State, build_deployment

SMOLLM2 = "smollm2-135m-instruct-q4_1"


def synthetic() -> ModelConfig:
    return ModelConfig(name="s", backend="synthetic")


def test_the_moves_a_deployment_may_make() -> None:
    d = build_deployment(synthetic())
    assert d.state is State.LOADING and not d.ready and not d.started
    with pytest.raises(RuntimeError, match="from loading to dead"):
        d.died("too early")
    d.move(State.READY)
    assert d.ready and d.started
    with pytest.raises(RuntimeError, match="from ready to failed"):
        d.move(State.FAILED, "no")
    d.move(State.DRAINING)
    assert not d.ready and d.started  # finishing what is in flight
    d.died("a crash while draining")
    assert d.state is State.DEAD and d.reason == "its engine died: a crash while draining"
    d.died("again")  # a second report changes nothing
    assert d.reason == "its engine died: a crash while draining"


def test_router_drains_what_would_serve_and_leaves_the_rest() -> None:
    ready, failed = build_deployment(synthetic()), build_deployment(ModelConfig(name="f", backend="synthetic"))
    ready.move(State.READY)
    failed.move(State.FAILED, "failed to start: no")
    router = Router([ready, failed])
    router.drain()
    assert (ready.state, failed.state) == (State.DRAINING, State.FAILED)


def test_an_engine_gets_paths_never_catalog_names() -> None:
    target = str(resolve(SMOLLM2))
    d = build_deployment(ModelConfig(name="sp", backend="speculative", variant=SMOLLM2, options={"draft": SMOLLM2}))
    assert d.kind is Kind.ENGINE
    assert d.engine.config.path == target  # type: ignore[attr-defined]
    assert d.engine.config.draft == target  # type: ignore[attr-defined]
    lookup = build_deployment(ModelConfig(name="ng", backend="speculative", path=target, options={"draft": "ngram"}))
    assert lookup.engine.config.lookup  # type: ignore[attr-defined]  # not a variant: left for the backend


def test_a_relay_variant_is_a_label_and_the_relay_is_no_engine() -> None:
    config = ModelConfig(
        name="up", backend="openai", variant="not-in-any-catalog", options={"upstreams": ["http://127.0.0.1:9"]}
    )
    d = build_deployment(config)
    assert d.kind is Kind.RELAY and d.relay is d.backend
    with pytest.raises(TypeError, match="relay, not a token engine"):
        d.engine  # noqa: B018
