"""Backends by name, from the `lightgate.backends` entry-point group, so a third-party
package can add one without touching the gateway. A class is a token engine
(backends/base.py's `Backend`) or a relay (backends/relay.py's `Relay`); its `kind`
says which."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from backends.base import Backend, Supervised
from backends.relay import Relay

GROUP = "lightgate.backends"


class BackendUnavailable(RuntimeError):
    """A configured backend is unknown or its engine package is not installed."""


def backend_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def backend_class(name: str) -> Any:
    """The class registered as `name`. Engines import their engine package lazily, so
    only a configured one must be installed."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise BackendUnavailable(f"unknown backend {name!r}; installed: {', '.join(backend_names())}")
    try:
        return found[0].load()
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {name!r} needs the package {exc.name!r}, which is not installed (pip install 'lightgate[{name}]')"
        ) from exc


def embedder_class(name: str) -> Any:
    """The class that serves embedding models (task `embed`) for backend `name`: its
    `embedder` attribute, "module:Class", imported only when such a model is configured."""
    backend = backend_class(name)
    target = getattr(backend, "embedder", None)
    if target is None:
        raise BackendUnavailable(f"the {name} backend does not serve embedding models (task: embed)")
    module, _, attr = str(target).partition(":")
    return getattr(import_module(module), attr)


def create_worker(name: str, path: str | None, options: dict[str, object], **how: Any) -> Backend:
    """Backend `name` in a worker process the gateway supervises (backends/worker/): a
    `Backend` that is also `Supervised`. `how`: label, restart_wait_s, unfetched."""
    from backends.worker.backend import WorkerBackend

    worker = WorkerBackend(name, path, options, **how)
    assert isinstance(worker, Supervised)
    return worker


def create_backend(name: str, path: str | None, options: dict[str, object]) -> Backend | Relay:
    backend: Backend | Relay = backend_class(name)(path, **options)
    return backend
