"""Engine backends, found by name through the `lightgate.backends` entry-point group,
so a third-party package can add one without touching the gateway."""

from __future__ import annotations

from importlib.metadata import entry_points

from backends.base import Backend

GROUP = "lightgate.backends"


class BackendUnavailable(RuntimeError):
    """A configured backend is unknown or its engine package is not installed."""


def backend_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def create_backend(name: str, path: str | None, options: dict[str, object]) -> Backend:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise BackendUnavailable(f"unknown backend {name!r}; installed: {', '.join(backend_names())}")
    try:
        cls = found[0].load()
    except ImportError as exc:  # engines import lazily: only a configured one must be present
        raise BackendUnavailable(
            f"backend {name!r} needs the package {exc.name!r}, which is not installed (pip install 'lightgate[{name}]')"
        ) from exc
    backend: Backend = cls(path, **options)
    return backend
