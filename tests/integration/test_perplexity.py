"""Perplexity by llama.cpp's and GPTQ's protocols, three ways that must agree: our
engine's logits, an independent computation with llama-cpp-python's high-level
`Llama` (logits for every position), and a live gateway's echoed prompt logprobs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from backends.logprobs import log_softmax
from compressed_models import perplexity, results
from compressed_models.catalog import resolve
from gateway.cli import main as lightgate
from tests.conftest import SMOL
from tests.server import RunningServer

CTX = 128
TEXT = " ".join(
    [
        "Robert Boulter is an English film , television and theatre actor .",
        "He had a guest starring role on the television series The Bill in 2000 .",
        "This was followed by a starring role in the play Herons written by Simon Stephens ,",
        "which was performed in 2001 at the Royal Court Theatre .",
        "He had a guest role in the television series Judge John Deed in 2002 .",
        "In 2004 Boulter landed a role as Craig in the episode Teddy 's Story of The Long Firm ;",
        "he starred alongside actors Mark Strong and Derek Jacobi .",
    ]
    * 4
)


LLAMACPP = perplexity.Protocol.of("llamacpp", CTX)
GPTQ = perplexity.Protocol.of("gptq", CTX)
# WikiText's raw layout: a blank line (a space) between headings and paragraphs.
RAW = " \n = Robert Boulter = \n \n" + "".join(f" {line} \n \n" for line in TEXT.split(" . ")[:12])


@pytest.fixture(scope="module")
def ours() -> perplexity.Perplexity:
    return perplexity.with_engine(str(resolve("smollm2-135m-instruct-q4_1")), TEXT, LLAMACPP, max_chunks=2)


@pytest.fixture(scope="module")
def ours_gptq() -> perplexity.Perplexity:
    return perplexity.with_engine(str(resolve("smollm2-135m-instruct-q4_1")), RAW, GPTQ, max_chunks=2)


def independent(text: str, bos_each_chunk: bool, first: int) -> float:
    """A protocol recomputed over llama-cpp-python's high-level API, with flash
    attention on as llama.cpp's default is on a CPU (it moves logits by up to ~0.5 nats)."""
    from llama_cpp import Llama

    llm = Llama(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=CTX, logits_all=True, flash_attn=True, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
    add_bos = llm.tokenize(b"", add_bos=True) != []
    nll, count = 0.0, 0
    for i in range(2):
        chunk = tokens[i * CTX : (i + 1) * CTX]
        if add_bos and bos_each_chunk:
            chunk[0] = llm.token_bos()
        llm.reset()  # type: ignore[no-untyped-call]
        llm.eval(chunk)
        scores = np.asarray(llm.scores[:CTX])
        for j in range(first, CTX - 1):
            nll -= float(log_softmax(scores[j])[chunk[j + 1]])
            count += 1
    return math.exp(nll / count)


def test_the_llamacpp_protocol_scores_second_halves(ours: perplexity.Perplexity) -> None:
    assert ours.chunks == 2 and ours.tokens_scored == 2 * (CTX - CTX // 2 - 1)
    assert 1 < ours.ppl < 1000


def test_the_gptq_protocol_scores_every_token_after_the_first(ours_gptq: perplexity.Perplexity) -> None:
    assert ours_gptq.chunks == 2 and ours_gptq.tokens_scored == 2 * (CTX - 1)
    # The Hugging Face rows of the raw file: blank lines empty, joined by blank lines.
    assert GPTQ.text(" \n = A = \n \n B . \n") == "\n\n = A = \n\n\n\n\n B . \n"
    assert LLAMACPP.text(RAW) == RAW


def test_engine_perplexity_matches_an_independent_computation(ours: perplexity.Perplexity) -> None:
    assert ours.ppl == pytest.approx(independent(TEXT, True, CTX // 2), rel=1e-3)


def test_gptq_perplexity_matches_an_independent_computation(ours_gptq: perplexity.Perplexity) -> None:
    assert ours_gptq.ppl == pytest.approx(independent(GPTQ.text(RAW), False, 0), rel=1e-3)


def test_through_the_gateway_it_is_the_same(
    ours: perplexity.Perplexity, ours_gptq: perplexity.Perplexity, gateway: RunningServer
) -> None:
    for protocol, expected, raw in ((LLAMACPP, ours, TEXT), (GPTQ, ours_gptq, RAW)):
        served = perplexity.with_server(gateway.base_url, SMOL, raw, protocol, max_chunks=2)
        assert served.tokens_scored == expected.tokens_scored
        assert served.ppl == pytest.approx(expected.ppl, rel=1e-3)


def test_eval_ppl_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTGATE_CACHE", str(tmp_path / "cache"))
    text, out = tmp_path / "text.raw", tmp_path / "ppl.json"
    text.write_text(RAW)
    args = ["eval", "ppl", "smollm2-135m-instruct-q4_1", "--text", str(text), "--ctx", str(CTX)]
    assert lightgate([*args, "--max-chunks", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["chunks"] == 1 and record["tokens"] == CTX - CTX // 2 - 1 and record["ppl"] > 1
    assert lightgate([*args, "--protocol", "gptq", "--max-chunks", "1", "--out", str(out)]) == 0
    gptq = json.loads(out.read_text())
    assert gptq["protocol"] == "gptq" and gptq["tokens"] == CTX - 1
    assert lightgate([*args, "--max-chunks", "2", "--out", str(out)]) == 0
    longer = json.loads(out.read_text())
    kept = results.load("smollm2-135m-instruct-q4_1")  # all kept for bench compare: a quick run replaces nothing
    assert set(kept) == {f"llamacpp@{CTX}x1", f"llamacpp@{CTX}x2", f"gptq@{CTX}x1"}
    assert results.perplexity("smollm2-135m-instruct-q4_1", "gptq") == gptq["ppl"]
    assert results.perplexity("smollm2-135m-instruct-q4_1") == longer["ppl"]  # the most tokens scored


def test_lm_evals_rolling_perplexity_through_the_gateway_matches_a_direct_one(
    gateway: RunningServer, smollm2_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-evaluation-harness's rolling log-likelihood (its WikiText task's metrics) on
    `local-completions`, with text prompts: it writes the end-of-text token in front of
    each document as text and counts the context with the model's Hugging Face
    tokenizer, so the gateway must read that token as the special token it is. Against
    the same word perplexity from llama-cpp-python's logits. The documents are
    WikiText-2 test paragraphs, each short enough for one window."""
    import lm_eval
    from llama_cpp import Llama
    from lm_eval.tasks import TaskManager

    from compressed_models.datasets import WIKITEXT

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    paragraphs = [p for p in WIKITEXT.read_text().split("\n") if 200 < len(p) < 900][:6]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"page": p}) + "\n" for p in paragraphs))
    (tmp_path / "wikitext_local.yaml").write_text(
        f"""task: wikitext_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / "docs.jsonl"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
process_results: !function words.process_results
metric_list:
  - metric: word_perplexity
"""
    )
    (tmp_path / "words.py").write_text(
        "import re\n\n\ndef process_results(doc, results):\n"
        "    return {'word_perplexity': (results[0], len(re.split(r'\\s+', doc['page'])))}\n"
    )
    args = (
        f"model={SMOL},base_url={gateway.v1}/completions,tokenizer_backend=huggingface,"
        f"tokenizer={smollm2_hf},tokenized_requests=False,max_length=512,num_concurrent=1"
    )
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=args,
        tasks=["wikitext_local"],
        task_manager=TaskManager(include_path=str(tmp_path)),
    )
    assert out is not None
    served = out["results"]["wikitext_local"]["word_perplexity,none"]

    llm = Llama(str(resolve("smollm2-135m-instruct-q4_1")), n_ctx=512, logits_all=True, flash_attn=True, verbose=False)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(smollm2_hf))
    nll, words = 0.0, 0
    for page in paragraphs:
        prefix = hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id  # as lm-eval picks it
        tokens = [prefix, *hf(page, add_special_tokens=False)["input_ids"]]
        llm.reset()  # type: ignore[no-untyped-call]
        llm.eval(tokens)
        scores = np.asarray(llm.scores[: len(tokens)])
        nll -= sum(float(log_softmax(scores[j])[tokens[j + 1]]) for j in range(len(tokens) - 1))
        words += len(re.split(r"\s+", page))
    assert served == pytest.approx(math.exp(nll / words), rel=0.02)
