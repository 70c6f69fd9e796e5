"""Tenants: API keys with names, rights and limits.

A key is known only by its SHA-256: the config may give the key itself (hashed as it
is read, never kept) or `sha256:<hex>`, which is what a mounted Secret should hold.
Keys come from three places, merged: `tenants` in the config file (or the
LIGHTGATE_TENANTS environment variable, a JSON list), the plain `api_keys` list (each
an unlimited tenant named after its hash), and `tenants_file`, a YAML or JSON list
that is read again on SIGHUP or when it changes. A reload keeps the running state
(windows, requests in flight) of every tenant whose name stays: it is the same object."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from gateway.ratelimit import Window

log = logging.getLogger("lightgate")

# Lower goes first: an interactive request is admitted before any standard or batch one.
PRIORITIES = {"interactive": 0, "standard": 1, "batch": 2}
Priority = Literal["interactive", "standard", "batch"]


def digest(key: str) -> str:
    """The SHA-256 a key is stored and compared as; `sha256:<hex>` is a digest already."""
    if key.startswith("sha256:"):
        return key.removeprefix("sha256:").lower()
    return hashlib.sha256(key.encode()).hexdigest()


class TenantConfig(BaseModel):
    """One API key: who it is, what it may use, how much."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")  # in metrics and logs; never the key
    key: str = Field(min_length=1, repr=False)  # the key, or sha256:<64 hex digits>
    models: list[str] | None = None  # names or aliases it may use; None: every model
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)  # prompt + max_tokens, reserved at admission
    max_concurrent: int | None = Field(default=None, ge=1)  # requests in flight at once
    priority: Priority = "standard"
    weight: float = Field(default=1.0, gt=0, le=1000)  # its share against other keys in one priority class

    @field_validator("key")
    @classmethod
    def _hash_form(cls, key: str) -> str:
        if key.startswith("sha256:"):
            hexdigits = key.removeprefix("sha256:")
            if len(hexdigits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexdigits):
                raise ValueError("a sha256: key must be followed by 64 hex digits")
        return "sha256:" + digest(key)  # the key itself is not kept past validation


_LIST = TypeAdapter(list[TenantConfig])


@dataclass(eq=False)
class Tenant:
    """A key's rights and its running state: windows of the last minute, requests in flight."""

    config: TenantConfig
    requests: Window | None = None
    tokens: Window | None = None
    in_flight: int = 0
    rank: int = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.rank = PRIORITIES[c.priority]
        if c.requests_per_minute and self.requests is None:
            self.requests = Window(c.requests_per_minute)
        if c.tokens_per_minute and self.tokens is None:
            self.tokens = Window(c.tokens_per_minute)

    @property
    def name(self) -> str:
        return self.config.name

    def may_use(self, names: list[str]) -> bool:
        allowed = self.config.models
        return allowed is None or any(n in allowed for n in names)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's rate-limit headers for the key's limits as they stand."""
        now = time.monotonic()
        out: list[tuple[bytes, bytes]] = []
        for kind, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is None:
                continue
            remaining = window.remaining(now)
            out += [
                (f"x-ratelimit-limit-{kind}".encode(), str(window.limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), f"{window.reset_after(now):.3f}s".encode()),
            ]
        return out

    def update(self, config: TenantConfig) -> None:
        """The same tenant after a reload, with its new rights. The object stays, so the
        requests in flight that hold it still count here, and so do the windows whose
        limit stays."""
        c = self.config = config
        self.rank = PRIORITIES[c.priority]
        if self.requests is None or self.requests.limit != c.requests_per_minute:
            self.requests = Window(c.requests_per_minute) if c.requests_per_minute else None
        if self.tokens is None or self.tokens.limit != c.tokens_per_minute:
            self.tokens = Window(c.tokens_per_minute) if c.tokens_per_minute else None


def read_tenants_file(path: str | Path) -> list[TenantConfig]:
    """A YAML (or JSON) list of tenants, or a mapping with a `tenants` list."""
    data = yaml.safe_load(Path(path).read_text()) or []
    if isinstance(data, dict):
        data = data.get("tenants") or []
    return _LIST.validate_python(data)


class Keyring:
    """The keys a request may carry, by digest. Empty: no authentication."""

    def __init__(self, tenants: list[TenantConfig], api_keys: list[str], tenants_file: str | None) -> None:
        self._static = list(tenants) + [TenantConfig(name=f"key-{digest(k)[:8]}", key=k) for k in api_keys]
        self.file = Path(tenants_file) if tenants_file else None
        self._by_digest: dict[str, Tenant] = {}
        self._mtime: float | None = None
        self.load()

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    @property
    def tenants(self) -> list[Tenant]:
        return list(self._by_digest.values())

    def identify(self, key: str) -> Tenant | None:
        return self._by_digest.get(digest(key)) if key else None

    def load(self) -> None:
        """(Re)read every source; a file that fails to read keeps the keys as they were."""
        configs = list(self._static)
        if self.file is not None:
            self._mtime = self.file.stat().st_mtime
            configs += read_tenants_file(self.file)
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"a tenant name is used twice: {sorted(n for n in names if names.count(n) > 1)}")
        old = {t.name: t for t in self._by_digest.values()}
        fresh: dict[str, Tenant] = {}
        for c in configs:
            tenant = old.get(c.name)
            if tenant is None:
                tenant = Tenant(c)
            else:
                tenant.update(c)
            fresh[digest(c.key)] = tenant
        self._by_digest = fresh

    def reload(self) -> None:
        try:
            self.load()
            log.info("API keys reloaded: %d tenants", len(self._by_digest))
        except (OSError, ValueError) as exc:
            log.error("API keys not reloaded, the old ones stay: %s", exc)

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload when the tenants file changes (a Secret's update arrives as a new file)."""
        if self.file is None:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                mtime = self.file.stat().st_mtime
            except OSError:
                continue  # mid-swap; the next look finds it
            if mtime != self._mtime:
                self.reload()
