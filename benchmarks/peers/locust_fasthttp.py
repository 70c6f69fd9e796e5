"""The peer of benchmarks/loadtest_ceiling.py: Locust's fastest user class
(FastHttpUser, on geventhttpclient) sending the same streaming completions as the
Lightgate tester and reading every SSE line, with no per-token bookkeeping."""

from __future__ import annotations

import os

from locust import FastHttpUser, task


class StreamingUser(FastHttpUser):
    @task
    def complete(self) -> None:
        body = {
            "model": os.environ.get("CEILING_MODEL", "m"),
            "prompt": "hello",
            "max_tokens": int(os.environ.get("CEILING_MAX_TOKENS", "16")),
            "stream": True,
            "ignore_eos": True,
        }
        for _ in self.client.iter_lines("/v1/completions", method="POST", json=body):
            pass
