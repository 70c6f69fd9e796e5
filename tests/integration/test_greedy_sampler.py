"""The scheduler's plain-greedy shortcut (numpy argmax over the logits row) picks the
same token as llama.cpp's own greedy sampler, row after row of a real batch."""

from __future__ import annotations

from backends.llamacpp.engine import EngineConfig, LlamaEngine
from backends.llamacpp.sampler import SamplerChain, Step
from compressed_models.catalog import resolve


def test_argmax_shortcut_equals_llama_cpp_greedy() -> None:
    path = str(resolve("smollm2-135m-instruct-q4_1"))
    engine = LlamaEngine(EngineConfig(path, 256, 256, 1, 2, 2, 0, True, None, False))
    try:
        tokens = engine.tokenize("The capital of France is Paris. The capital of Italy is Rome. " * 3)
        engine.decode(tokens, list(range(len(tokens))), [0] * len(tokens), [True] * len(tokens))
        shortcut = SamplerChain([Step("greedy")], engine.n_vocab)
        native = SamplerChain([Step("greedy")], engine.n_vocab)
        native.plain_greedy = False  # the same chain, through llama_sampler_sample
        assert shortcut.plain_greedy
        picked = [shortcut.sample(engine.ctx, i, engine.logits(i)) for i in range(len(tokens))]
        expected = [native.sample(engine.ctx, i, engine.logits(i)) for i in range(len(tokens))]
        assert picked == expected
        assert len(set(picked)) > 5  # many different rows, not one answer repeated
        shortcut.close()
        native.close()
    finally:
        engine.close()
