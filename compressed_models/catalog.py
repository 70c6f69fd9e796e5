"""The catalog of compressed variants: one YAML manifest per variant in `catalog/`,
and where each variant's weights are on this machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

CATALOG_DIR = Path(__file__).parent / "catalog"


class VariantNotFound(LookupError):
    pass


def manifest(name: str) -> dict[str, Any]:
    path = CATALOG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CATALOG_DIR.glob("*.yaml"))
        raise VariantNotFound(f"no catalog entry {name!r}; known: {', '.join(known)}")
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def resolve(name: str) -> Path:
    """The weights of variant `name` on disk."""
    source = manifest(name)["source"]
    if "package" in source:
        # find_spec locates the package without importing it: some model packages
        # import heavy or missing dependencies at import time.
        spec = importlib.util.find_spec(source["package"])
        if spec is None or not spec.submodule_search_locations:
            raise VariantNotFound(
                f"variant {name!r} lives in the Python package {source['package']!r}, which is not installed"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / str(source["resource"])
    else:
        path = Path(str(source["path"])).expanduser()
    if not path.is_file():
        raise VariantNotFound(f"variant {name!r}: {path} does not exist")
    return path
