"""Tenants: keys kept as hashes, rights by model, the file reloaded with state kept."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.tenants import Keyring, TenantConfig


def test_a_key_is_kept_only_as_its_hash() -> None:
    c = TenantConfig(name="acme", key="sk-acme-123")
    assert "sk-acme-123" not in c.model_dump_json() and "sk-acme-123" not in repr(c)
    assert c.key == "sha256:" + hashlib.sha256(b"sk-acme-123").hexdigest()
    hashed = TenantConfig(name="acme", key=c.key)
    assert hashed.key == c.key
    with pytest.raises(ValidationError):
        TenantConfig(name="acme", key="sha256:1234")
    with pytest.raises(ValidationError):
        TenantConfig(name="bad name", key="k")


def test_keys_from_every_source_and_a_reload_keeps_the_counts(tmp_path: Path) -> None:
    file = tmp_path / "tenants.yaml"
    file.write_text("- {name: b, key: sk-bbbbbb, requests_per_minute: 5}\n")
    ring = Keyring([TenantConfig(name="a", key="sk-aaaaaa", models=["m"])], ["sk-plain"], str(file))
    a, b, plain = ring.identify("sk-aaaaaa"), ring.identify("sk-bbbbbb"), ring.identify("sk-plain")
    assert a is not None and b is not None and plain is not None
    assert ring.identify("sk-wrong") is None and ring.identify("") is None
    assert a.may_use(["m", "alias"]) and not a.may_use(["other"]) and b.may_use(["anything"])
    assert plain.name.startswith("key-") and plain.requests is None
    assert b.requests is not None and b.requests.take(1) is not None
    b.in_flight = 2
    # The file changes: b keeps what it has used; a new key appears; a broken file changes nothing.
    file.write_text("- {name: b, key: sk-bbbbbb, requests_per_minute: 5}\n- {name: c, key: sk-cccccc}\n")
    ring.reload()
    b2 = ring.identify("sk-bbbbbb")
    assert b2 is not None and b2.requests is not None and b2.requests.remaining() == 4 and b2.in_flight == 2
    b.in_flight -= 2  # the requests in flight at the reload end, on the object they hold
    assert b2.in_flight == 0
    assert ring.identify("sk-cccccc") is not None
    file.write_text("- {name: b}\n")
    ring.reload()
    assert ring.identify("sk-cccccc") is not None
