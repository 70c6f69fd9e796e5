"""Servers on this machine's loopback, as the tests and benchmarks run them: a free
port, and a server process awaited until it answers, stopped on exit."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(args: list[str], port: int, ready_path: str = "/health", env: dict[str, str] | None = None) -> Iterator[str]:
    """A server in its own process on a loopback port, stopped on exit. Yields its base URL."""
    with server_process(args, port, ready_path, env) as (base, _):
        yield base


@contextmanager
def server_process(
    args: list[str], port: int, ready_path: str = "/health", env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """`server`, yielding its process id too (to read the process's own CPU time)."""
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # vLLM on a CPU takes a while to start
    try:
        while True:
            try:
                if httpx.get(base + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {' '.join(args)}")
            time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # llama-server can sit on a deep queue past SIGTERM
            proc.kill()
            proc.wait()
