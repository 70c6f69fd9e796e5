"""The peers of benchmarks/loadtest_ceiling.py: Locust's fastest user class
(FastHttpUser, on geventhttpclient) sending the same streaming completions as the
Lightgate tester. `LinesUser` reads every SSE line and nothing more; `EventsUser`
also decodes each event and time-stamps its text, the work any tester that
reports TTFT and inter-token latency has to do (and the Lightgate tester does)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import FastHttpUser, task

from loadtest.client import RequestSpec


def _body() -> dict[str, Any]:
    # The very body the Lightgate tester sends (usage in the stream included), so
    # the server does the same work for every generator.
    spec = RequestSpec(
        model=os.environ.get("CEILING_MODEL", "m"), max_tokens=int(os.environ.get("CEILING_MAX_TOKENS", "16"))
    )
    return spec.body("hello")


class LinesUser(FastHttpUser):
    @task
    def complete(self) -> None:
        for _ in self.client.iter_lines("/v1/completions", method="POST", json=_body()):
            pass


class EventsUser(FastHttpUser):
    @task
    def complete(self) -> None:
        stamps: list[float] = []
        for line in self.client.iter_lines("/v1/completions", method="POST", json=_body()):
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if any(c.get("text") for c in event.get("choices") or []):
                    stamps.append(time.perf_counter())
