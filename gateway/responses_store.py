"""Stored responses (`store`, `previous_response_id`, GET and DELETE /v1/responses/{id}):
a SQLite file, so that a restart keeps them, bounded in count and kept for a TTL.

Each row holds the response object as the client saw it and the conversation that
led to it, as chat messages with the response's own output last: a follow-up
continues from there. The instructions are not part of it (OpenAI does not carry a
previous response's instructions over)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    response TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
"""


class ResponseStore:
    def __init__(self, path: str, ttl_s: float, max_entries: int) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._lock = threading.Lock()  # one connection, used from the loop and worker threads
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL with synchronous=NORMAL: a commit does not wait for the disk (a crash may
        # lose the last few responses, never corrupt the file).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def put(self, response_id: str, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                (response_id, now, json.dumps(response), json.dumps(conversation)),
            )
            self._db.execute("DELETE FROM responses WHERE created < ?", (now - self.ttl_s,))
            self._db.execute(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created DESC LIMIT -1 OFFSET ?)",
                (self.max_entries,),
            )

    def get(self, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The response and its conversation, unless unknown or expired."""
        with self._lock:
            row = self._db.execute(
                "SELECT response, conversation FROM responses WHERE id = ? AND created >= ?",
                (response_id, time.time() - self.ttl_s),
            ).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), json.loads(row[1])

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
