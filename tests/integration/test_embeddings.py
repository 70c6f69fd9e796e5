"""/v1/embeddings on the packaged all-MiniLM-L6-v2, as a GGUF made by llama.cpp's
converter on the llamacpp backend and as its sentence-transformers folder on the
transformers backend, through a real gateway and the official openai client:
agreement with sentence-transformers itself, a retrieval check, the input shapes,
base64, truncation, the errors and the metrics."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from compressed_models import catalog
from gateway.config import ModelConfig, Settings
from tests.metrics_util import delta, scrape, value
from tests.server import RunningServer, serve

GGUF, HF, GEN = "minilm", "minilm-hf", "synthetic-generator"
MODELS = [GGUF, HF]

TEXTS = [
    "The cat sat on the mat.",
    "A quantum computer stores information in qubits.",
    "Paris is the capital of France, known for its museums and cafés.",
    "def add(a, b):\n    return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "🙂 emoji and punctuation!?",
]

# Each query paraphrases one passage, which sits beside a distractor that shares its
# words and not its meaning: only vectors that carry the meaning rank them right.
PASSAGES = [
    "The Eiffel Tower was finished in 1889 and stands in the middle of Paris.",
    "Paris Hilton finished her tour in 1889 Club, a famous tower-shaped nightclub.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "Green paint and plant pots are sold cheaply at the garden centre on Sunday light sales.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Interest in the central market of the town rose sharply after it was rebuilt; the bank stock was sold.",
    "Regular exercise such as running strengthens the heart and lungs.",
    "The heart of the city has a running track next to the lung clinic, which is open regularly.",
    "A recipe for pancakes needs flour, eggs, milk and a pinch of salt.",
    "Flour mills and egg farms are the main employers in the salt-mining town of Milk River.",
    "Volcanoes erupt when molten rock from deep underground reaches the surface.",
    "The rock band Deep Surface played underground clubs before the album erupted in sales.",
]
QUERIES = [
    "When was the famous iron landmark in France's capital completed?",
    "How do green plants make food from light?",
    "Why did share prices drop when borrowing got more expensive?",
    "What does jogging do for cardiovascular health?",
    "What ingredients go into breakfast crêpes?",
    "What makes lava come out of a mountain?",
]
ANSWERS = [0, 2, 4, 6, 8, 10]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    settings = Settings(
        models=[
            ModelConfig(name=GGUF, variant="all-minilm-l6-v2-f16"),
            ModelConfig(name=HF, backend="transformers", variant="all-minilm-l6-v2"),
            ModelConfig(name=GEN, backend="synthetic"),
        ]
    )
    with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """sentence-transformers' own embeddings of TEXTS, on the packaged folder."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(catalog.resolve("all-minilm-l6-v2")), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=False))


def vectors(response: openai.types.CreateEmbeddingResponse) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("encoding", ["float", "sdk-default"])
def test_agrees_with_sentence_transformers(
    client: openai.OpenAI, reference: np.ndarray, model: str, encoding: str
) -> None:
    # Not told a format, the SDK asks for base64 and decodes it itself; float comes as a list.
    kwargs = {"encoding_format": "float"} if encoding == "float" else {}
    got = vectors(client.embeddings.create(model=model, input=TEXTS, **kwargs))  # type: ignore[arg-type]
    assert got.shape == reference.shape == (len(TEXTS), 384)
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999, cosine
    # The folder declares Normalize: unit vectors, as sentence-transformers gives them.
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


def test_base64_is_little_endian_float32(server: RunningServer) -> None:
    body = {"model": GGUF, "input": ["hello"], "encoding_format": "base64"}
    raw = httpx.post(server.v1 + "/embeddings", json=body).json()["data"][0]["embedding"]
    floats = httpx.post(server.v1 + "/embeddings", json={**body, "encoding_format": "float"}).json()
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4")
    assert np.array_equal(decoded, np.array(floats["data"][0]["embedding"], dtype=np.float32))


def retrieved(client: openai.OpenAI, model: str) -> list[int]:
    passages = vectors(client.embeddings.create(model=model, input=PASSAGES))
    queries = vectors(client.embeddings.create(model=model, input=QUERIES))
    return [int(i) for i in (queries @ passages.T).argmax(axis=1)]


@pytest.mark.parametrize("model", MODELS)
def test_queries_find_their_passages(client: openai.OpenAI, model: str) -> None:
    assert retrieved(client, model) == ANSWERS


def test_the_retrieval_check_fails_a_wrong_pooling(client: openai.OpenAI, server: RunningServer) -> None:
    """The same check on the same model served with CLS pooling instead of the mean
    its folder declares: the distractors win."""
    embedder = server.router.get(HF).embedder
    declared = embedder.pooling  # type: ignore[attr-defined]
    embedder.pooling = dataclasses.replace(declared, modes=("cls_token",))  # type: ignore[attr-defined]
    try:
        assert retrieved(client, HF) != ANSWERS
    finally:
        embedder.pooling = declared  # type: ignore[attr-defined]


def test_the_two_backends_agree(client: openai.OpenAI) -> None:
    a = vectors(client.embeddings.create(model=GGUF, input=TEXTS))
    b = vectors(client.embeddings.create(model=HF, input=TEXTS))
    assert ((a * b).sum(1)).min() >= 0.999


@pytest.mark.parametrize("model", MODELS)
def test_input_shapes_and_usage(client: openai.OpenAI, server: RunningServer, model: str) -> None:
    one = client.embeddings.create(model=model, input="The cat sat on the mat.")
    ids = httpx.post(server.base_url + "/tokenize", json={"model": model, "prompt": "The cat sat on the mat."}).json()
    tokens = ids["tokens"]
    assert one.usage.prompt_tokens == one.usage.total_tokens == len(tokens)
    as_ids = client.embeddings.create(model=model, input=tokens)
    as_lists = client.embeddings.create(model=model, input=[tokens, tokens[:4]])
    assert len(as_lists.data) == 2 and as_lists.usage.prompt_tokens == len(tokens) + 4
    assert np.allclose(vectors(one), vectors(as_ids), atol=1e-5)
    assert np.allclose(vectors(one), vectors(as_lists)[:1], atol=1e-5)
    assert as_lists.model == model and as_lists.object == "list"


@pytest.mark.parametrize("model", MODELS)
def test_concurrent_requests_each_get_their_own_rows(server: RunningServer, model: str) -> None:
    """Sixteen requests at once share batches; each still gets its own inputs' vectors."""

    async def run() -> list[np.ndarray]:
        async with openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0) as c:
            answers = await asyncio.gather(
                *(c.embeddings.create(model=model, input=[TEXTS[i % 6], TEXTS[(i + 1) % 6]]) for i in range(16))
            )
        return [vectors(a) for a in answers]

    alone = vectors(openai.OpenAI(base_url=server.v1, api_key="unused").embeddings.create(model=model, input=TEXTS))
    for i, got in enumerate(asyncio.run(run())):
        assert np.allclose(got, alone[[i % 6, (i + 1) % 6]], atol=1e-4)


def test_dimensions_cut_and_renormalize_where_the_model_allows_it(client: openai.OpenAI, server: RunningServer) -> None:
    """MiniLM was not trained for truncation, so its catalog entry lists no widths (the
    400 below); a Matryoshka-trained model's entry would. The deployment is given
    widths here to check what the route does with them."""
    deployment = server.router.get(GGUF)
    declared = deployment.traits
    deployment.traits = dataclasses.replace(declared, matryoshka_dimensions=(128, 256))
    try:
        whole = vectors(client.embeddings.create(model=GGUF, input=TEXTS[:2]))
        cut = vectors(client.embeddings.create(model=GGUF, input=TEXTS[:2], dimensions=128))
        assert cut.shape == (2, 128)
        assert np.allclose(cut, whole[:, :128] / np.linalg.norm(whole[:, :128], axis=1, keepdims=True), atol=1e-5)
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model=GGUF, input="x", dimensions=100)
        assert err.value.param == "dimensions" and "[128, 256]" in err.value.message
    finally:
        deployment.traits = declared


def test_truncate_prompt_tokens(client: openai.OpenAI) -> None:
    long = "word " * 700
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=GGUF, input=long)
    assert err.value.code == "context_length_exceeded" and "512" in err.value.message
    cut = client.embeddings.create(model=GGUF, input=long, extra_body={"truncate_prompt_tokens": -1})
    assert cut.usage.prompt_tokens == 512
    cut = client.embeddings.create(model=HF, input=long, extra_body={"truncate_prompt_tokens": 100})
    assert cut.usage.prompt_tokens == 100


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": GGUF, "input": "x", "dimensions": 128}, "dimensions", "not trained for truncation"),
        ({"model": GGUF, "input": []}, "input", "empty"),
        ({"model": GGUF, "input": [[]]}, "input", "empty"),
        ({"model": GGUF, "input": [10**9]}, "input", "outside the vocabulary"),
        ({"model": GGUF, "input": "x", "encoding_format": "hex"}, "encoding_format", ""),
        ({"model": GEN, "input": "x"}, "model", "text generation model"),
        ({"model": GGUF, "input": "x", "truncate_prompt_tokens": 4096}, "truncate_prompt_tokens", "context"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    server: RunningServer, body: dict[str, object], param: str, words: str
) -> None:
    r = httpx.post(server.v1 + "/embeddings", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_generation_routes_refuse_an_embedding_model(server: RunningServer) -> None:
    for path, body in [
        ("/completions", {"model": GGUF, "prompt": "x"}),
        ("/chat/completions", {"model": HF, "messages": [{"role": "user", "content": "x"}]}),
        ("/responses", {"model": GGUF, "input": "x"}),
    ]:
        r = httpx.post(server.v1 + path, json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_task_mismatch", r.text
    assert httpx.post(server.v1 + "/embeddings", json={"model": "nope", "input": "x"}).status_code == 404


def test_metrics_count_embeddings_under_their_task(client: openai.OpenAI, server: RunningServer) -> None:
    labels = {"model": GGUF, "backend": "llamacpp", "variant": "all-minilm-l6-v2-f16", "task": "embed"}
    before = scrape(server.base_url)
    answer = client.embeddings.create(model=GGUF, input=TEXTS[:3])
    after = scrape(server.base_url)
    assert delta(before, after, "lightgate_requests_total", outcome="embedded", **labels) == 1
    assert delta(before, after, "lightgate_prompt_tokens_total", **labels) == answer.usage.prompt_tokens
    assert value(after, "lightgate_model_ready", **labels) == 1
    assert value(after, "lightgate_model_ready", model=GEN, task="generate") == 1
