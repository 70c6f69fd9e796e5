"""The catalog and the GGUF ladder: manifests are checked against the schema, a
ladder rung built by llama.cpp's quantizer becomes a catalog entry that the gateway
serves by name, and a corrupt artifact or manifest fails loudly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from compressed_models import catalog
from compressed_models.build import build_ladder
from gateway.cli import main as lightgate
from gateway.config import ModelConfig, Settings
from tests.server import serve

BASE = "smollm2-135m-instruct-q4_1"


@pytest.fixture(scope="module")
def ladder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Q8_0 and Q2_K from the packaged SmolLM2, in a cache of the test's own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LIGHTGATE_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield build_ladder(BASE, ["Q8_0", "Q2_K"])
    finally:
        mp.undo()


def test_the_ladder_makes_checked_catalog_entries(ladder: list[str]) -> None:
    assert ladder == ["smollm2-135m-instruct-q8_0-from-q4_1", "smollm2-135m-instruct-q2_k-from-q4_1"]
    assert set(ladder) < set(catalog.names()) and BASE in catalog.names()
    q8, q2 = (catalog.manifest(name) for name in ladder)
    assert q8["method"] == "Q8_0" and q2["method"] == "Q2_K"
    assert q8["size_bytes"] > catalog.manifest(BASE)["size_bytes"] > q2["size_bytes"]
    assert 8 < q8["bits_per_weight"] < 9  # Q8_0 is 8.5 bits on every quantized tensor
    assert "F16 dequantization" in q8["provenance"] and BASE in q8["provenance"]
    for name in ladder:
        assert catalog.verify(name).is_file()  # size and sha256 as recorded


def test_the_output_layer_takes_the_type_asked_for(ladder: list[str]) -> None:
    """llama.cpp picks Q8_0 for SmolLM2's output layer (its rows, 576 wide, are not a
    multiple of K-quants' 256); asked for Q4_0, the layer (the token embedding, which
    SmolLM2 ties to it) is Q4_0, and the variant's name and provenance say so."""
    import gguf

    [default] = build_ladder(BASE, ["Q4_0"])
    [asked] = build_ladder(BASE, ["Q4_0"], output_type="Q4_0")
    assert asked == "smollm2-135m-instruct-q4_0-output-q4_0-from-q4_1"
    assert "output layer Q4_0" in catalog.manifest(asked)["provenance"]

    def output_layer(name: str) -> str:
        tensors = {t.name: t.tensor_type.name for t in gguf.GGUFReader(catalog.resolve(name)).tensors}
        return tensors.get("output.weight", tensors["token_embd.weight"])

    assert (output_layer(default), output_layer(asked)) == ("Q8_0", "Q4_0")
    assert catalog.manifest(asked)["size_bytes"] < catalog.manifest(default)["size_bytes"]
    with pytest.raises(ValueError, match="Q9_9"):
        build_ladder(BASE, ["Q4_0"], output_type="Q9_9")


def test_a_rung_is_served_by_name_and_answers(ladder: list[str]) -> None:
    settings = Settings(models=[ModelConfig(name="q2", variant=ladder[1], options={"n_ctx": 256, "n_parallel": 1})])
    with serve(settings) as server:
        r = httpx.post(server.v1 + "/completions", json={"model": "q2", "prompt": "Hello", "max_tokens": 6})
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] >= 1
        metrics = httpx.get(server.base_url + "/metrics").text
    assert f'variant="{ladder[1]}"' in metrics  # the variant labels its series


def test_a_corrupt_artifact_fails_the_check(ladder: list[str], tmp_path: Path) -> None:
    path = catalog.resolve(ladder[0])
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        with pytest.raises(catalog.VariantNotFound, match="sha256"):
            catalog.verify(ladder[0])
        path.write_bytes(original[:-10])
        with pytest.raises(catalog.VariantNotFound, match="bytes"):
            catalog.verify(ladder[0])
    finally:
        path.write_bytes(original)
    assert lightgate(["models", "fetch", ladder[0]]) == 0


def test_a_bad_manifest_is_an_error_naming_its_file(ladder: list[str]) -> None:
    path = catalog.user_catalog_dir() / "broken.yaml"
    entry = catalog.manifest(ladder[1]) | {"name": "broken"}
    del entry["licence"]
    path.write_text(yaml.safe_dump(entry))
    try:
        with pytest.raises(ValueError, match=r"(?s)broken\.yaml.*licence"):
            catalog.manifest("broken")
    finally:
        path.unlink()


def test_models_list_and_show(ladder: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert lightgate(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "Q2_K" in listed and "Q4_1" in listed
    assert lightgate(["models", "show", ladder[1]]) == 0
    shown = capsys.readouterr().out
    assert f"name: {ladder[1]}" in shown and "weights: " + str(catalog.resolve(ladder[1])) in shown
