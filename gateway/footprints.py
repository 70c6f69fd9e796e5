"""What each model's worker took in memory, host and GPU by GPU, kept on disk so the
memory budget knows it after a restart of the gateway: the estimate from the weights
is the budget's guess only for a model that never ran with these weights and options.

One JSON file (`footprints_file`, else footprints.json in the cache folder), keyed by
the worker's `footprint_key()`: change the options or the weights and the old figure
no longer applies. Written whole to a temporary file and renamed, so a gateway killed
mid-write leaves the last good file."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("lightgate")


@dataclass(slots=True, frozen=True)
class Footprint:
    """Bytes a model holds: host memory, and memory on each GPU by index."""

    host: int
    gpu: dict[int, int] = field(default_factory=dict)

    def most(self, other: Footprint) -> Footprint:
        """Each part the larger of the two."""
        gpus = self.gpu.keys() | other.gpu.keys()
        return Footprint(max(self.host, other.host), {i: max(self.gpu.get(i, 0), other.gpu.get(i, 0)) for i in gpus})


class FootprintStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, Any] = {}
        try:
            self._entries = json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:  # unreadable: start afresh, the estimates stand
            log.warning("footprints file %s not read (%s): using estimates until models run", path, exc)

    def get(self, key: str | None) -> Footprint | None:
        entry: Any = self._entries.get(key) if key is not None else None
        try:
            return Footprint(int(entry["host"]), {int(i): int(b) for i, b in (entry.get("gpu") or {}).items()})
        except (TypeError, KeyError, ValueError, AttributeError):  # absent, or edited into another shape
            return None

    def put(self, key: str | None, model: str, footprint: Footprint) -> None:
        """Keep `footprint` under `key` (a no-op when it is already what is kept)."""
        if key is None or self.get(key) == footprint:
            return
        self._entries[key] = {
            "model": model,  # for a person reading the file; the key is what matches
            "host": footprint.host,
            "gpu": {str(i): b for i, b in footprint.gpu.items()},
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(self._entries, indent=1, sort_keys=True))
            partial.replace(self.path)
        except OSError as exc:  # a read-only cache: the budget still knows it until the restart
            log.warning("footprints file %s not written: %s", self.path, exc)
