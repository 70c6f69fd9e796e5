"""Schemathesis against the running gateway: its examples, coverage, fuzzing and
stateful phases on the OpenAPI schema the gateway serves, checked for server errors.

The schema is patched in one way before the run: `model` may only be a served model's
name (so the fuzzing reaches tokenizing, sampling and generation, not only the 404
for an unknown model), and the lengths and counts that cost engine time are capped
so that generations stay short. The synthetic model that fails on purpose is left
out: its 500 is the answer it exists to give."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FAST, SMOL
from tests.metrics_util import delta, scrape
from tests.server import RunningServer

MODELS = [SMOL, "smol", FAST]
CAPS = {"max_tokens": 8, "max_completion_tokens": 8, "max_output_tokens": 8, "min_tokens": 8, "n": 2, "best_of": 2}


def patched(schema: dict[str, Any]) -> dict[str, Any]:
    for body in schema["components"]["schemas"].values():
        props = body.get("properties", {})
        if "model" in props and props["model"].get("type") == "string":
            props["model"] = {"type": "string", "enum": MODELS}
        for name, cap in CAPS.items():
            if name in props:
                props[name] = _capped(props[name], cap)
    return schema


def _capped(prop: dict[str, Any], cap: int) -> dict[str, Any]:
    """An integer property (or integer-or-null) with `maximum` at most `cap`."""
    if prop.get("type") == "integer":
        return {**prop, "maximum": min(cap, prop.get("maximum", cap))}
    if "anyOf" in prop:
        return {**prop, "anyOf": [_capped(p, cap) for p in prop["anyOf"]]}
    return prop


def test_no_server_error_under_schemathesis(gateway: RunningServer, tmp_path: Path) -> None:
    schema = patched(httpx.get(gateway.base_url + "/openapi.json").json())
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(schema))
    report = tmp_path / "junit.xml"
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        str(path),
        "--url",
        gateway.base_url,
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "40",
        "--seed",
        "21",
        "--workers",
        "2",
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    before = scrape(gateway.base_url)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache goes there
    after = scrape(gateway.base_url)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    # The run must have reached the model: a healthy number of cases, across the operations.
    cases = sum(int(n) for n in re.findall(r"(\d+) generated", out)) or _cases(out)
    assert cases >= 300, out[-3000:]
    # ...and the real model's generation code: requests that ran to a finish on SmolLM2.
    finished = sum(delta(before, after, "lightgate_requests_total", model=SMOL, outcome=o) for o in ("stop", "length"))
    assert finished >= 20, finished
    print(f"schemathesis: {cases} cases, {finished:.0f} generations on {SMOL}, no server error")


def _cases(out: str) -> int:
    found = re.search(r"Test cases:\s*\n?\s*(\d+)", out)
    return int(found.group(1)) if found else 0
