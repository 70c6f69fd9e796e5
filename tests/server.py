"""A real Lightgate server for tests: uvicorn on a free loopback port, in a thread of
the test process so tests can also look at the engine's state."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
import yaml
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config import Settings
from gateway.connections import uvicorn_config
from gateway.router import Router
from leanhttp.local import free_port, server


@dataclass
class RunningServer:
    base_url: str
    app: FastAPI

    @property
    def router(self) -> Router:
        router: Router = self.app.state.router
        return router

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"


@contextmanager
def serve(settings: Settings, *, wait_ready: bool = True, startup_s: float = 60) -> Iterator[RunningServer]:
    app = create_app(settings)
    config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_s  # model loading happens in the app's lifespan
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    running = RunningServer(f"http://127.0.0.1:{port}", app)
    if wait_ready:
        while httpx.get(running.base_url + "/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server's models did not load")
            time.sleep(0.05)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    """Poll a condition (a callable returning bool) until it holds or time runs out."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@contextmanager
def serve_process(models: list[dict[str, object]], tmp_dir: Path) -> Iterator[str]:
    """Lightgate in its own process (`lightgate serve`), for tests that time it from
    outside and must not share a GIL with it. Yields the base URL."""
    config = tmp_dir / "lightgate.yaml"
    config.write_text(yaml.safe_dump({"models": models, "access_log": False}))
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    with server(cmd, port, "/ready") as base:
        yield base
