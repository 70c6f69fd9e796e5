"""Locust users for teams that already run Locust, built from the same request code
as `lightgate bench run` (loadtest/client.py): streaming completions or chat, timed
per request. Each request reports three Locust events: POST (the whole request, to
its last token; its size is the output token count, so tokens/s = requests/s x
average size), TTFT
(time to first token) and TPOT (time per output token after the first; 1000/TPOT
is one stream's tokens/s).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --model smollm2-135m \\
        --headless -u 8 -r 2 --run-time 60s --csv results/locust
"""

from __future__ import annotations

import json
import time
from typing import Any

from locust import HttpUser, events, task
from locust.env import Environment

from loadtest.client import RequestRecord, RequestSpec, _read_event
from loadtest.prompts import WIKITEXT, fixed, wikitext


def _options(parser: Any) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="model to request")
    parser.add_argument("--api", choices=["completions", "chat"], default="completions")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--wikitext-words", type=int, default=64, help="0: one fixed prompt instead")


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]  # Locust leaves it untyped


class LightgateUser(HttpUser):
    """One user: streaming requests back to back (Locust's think time is wait_time)."""

    def on_start(self) -> None:
        env: Environment = self.environment
        options = env.parsed_options
        assert options is not None, "run through the locust command, which parses the options"
        self.spec = RequestSpec(options.model, options.api, options.max_tokens)
        words = options.wikitext_words
        self.prompts = wikitext(words) if words and WIKITEXT.is_file() else fixed("Once upon a time,")
        self.sent = 0

    @task
    def generate(self) -> None:
        prompt = self.prompts.get(self.sent)
        self.sent += 1
        t0 = time.perf_counter()
        record = RequestRecord(index=self.sent, start=0.0)
        with self.client.post(
            self.spec.path, json=self.spec.body(prompt.text), stream=True, catch_response=True, name=self.spec.path
        ) as response:
            record.status = response.status_code
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            for raw in response.iter_lines():
                line = raw.decode() if isinstance(raw, bytes) else raw
                if line.startswith("data: ") and line != "data: [DONE]":
                    _read_event(json.loads(line[6:]), time.perf_counter() - t0, record)
            record.end = time.perf_counter() - t0
            if record.error or not record.chunk_times:
                response.failure(record.error or "the stream carried no text")
                return
            # Locust stops a streamed response's clock at its headers; the request's time
            # is until its last token, and its "size" the tokens it brought.
            response.request_meta["response_time"] = record.e2e * 1000
            response.request_meta["response_length"] = record.tokens
            response.success()
        self._fire("TTFT", record.ttft)
        self._fire("TPOT", record.tpot)

    def _fire(self, kind: str, seconds: float | None) -> None:
        if seconds is None:
            return
        self.environment.events.request.fire(
            request_type=kind,
            name=self.spec.path,
            response_time=seconds * 1000,
            response_length=0,
            exception=None,
            context={},
        )
