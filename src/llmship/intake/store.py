"""What `llmship intake` received, in SQLite: one row per request and one per decoded item.

WAL mode lets tests and `llmship intake --show` read from other processes while the server writes.
The API key's value is never stored, only whether one was sent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from typing import Any

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,               -- unix time the request arrived
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT,                      -- a key of sinks.intakes.ROUTES; NULL for unknown paths
    status INTEGER NOT NULL,        -- the status we answered
    payload_id TEXT,                -- header X-Llmship-Payload-Id
    api_key_present INTEGER NOT NULL,
    content_encoding TEXT,
    bytes INTEGER NOT NULL,         -- body size on the wire (compressed)
    items INTEGER NOT NULL,         -- items decoded and stored
    fault TEXT,                     -- the injected fault that decided the answer, NULL if none
    reason TEXT                     -- why a request was refused, NULL when accepted
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    request_id INTEGER REFERENCES requests(id),
    kind TEXT NOT NULL,
    payload_id TEXT,
    received_at REAL NOT NULL,
    data TEXT NOT NULL              -- the item as JSON
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, id);
CREATE INDEX IF NOT EXISTS requests_kind ON requests(kind, id);
"""

_REQUEST_COLUMNS = ("id", "at", "method", "path", "kind", "status", "payload_id", "api_key_present",
                    "content_encoding", "bytes", "items", "fault", "reason")


class IntakeStore:
    """One SQLite connection; cheap to open, so readers may open one per query and drop it."""

    def __init__(self, path: str | PathLike[str]) -> None:
        # autocommit (isolation_level=None): reads never hold a transaction open, writes use BEGIN/COMMIT
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # wait for the writer's short commits instead of failing with "database is locked"
        self._db.execute("PRAGMA busy_timeout = 5000")
        has_schema = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'").fetchone()
        if not has_schema:  # only the first opener writes; readers of an existing file stay read-only
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(_SCHEMA)
        # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the last commits)
        self._db.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> IntakeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_request(self, *, method: str, path: str, kind: str | None, status: int,
                    payload_id: str | None, api_key_present: bool, content_encoding: str | None,
                    body_bytes: int, fault: str | None = None, reason: str | None = None,
                    records: list[dict[str, Any]] | None = None, at: float | None = None) -> int:
        """Record one request and the items it carried (``records``) in one transaction; returns its id.

        One transaction, so a reader never sees an accepted request without its records.
        """
        at = time.time() if at is None else at
        records = records or []
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO requests (at, method, path, kind, status, payload_id, api_key_present,"
                " content_encoding, bytes, items, fault, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (at, method, path, kind, status, payload_id, int(api_key_present), content_encoding,
                 body_bytes, len(records), fault, reason),
            )
            request_id = int(cur.lastrowid)
            self._insert_records(kind or "", payload_id, records, request_id, at)
        return request_id

    def add_records(self, kind: str, payload_id: str | None, items: list[dict[str, Any]],
                    request_id: int | None = None, received_at: float | None = None) -> None:
        with self._transaction():
            self._insert_records(kind, payload_id, items, request_id,
                                 time.time() if received_at is None else received_at)

    def _insert_records(self, kind: str, payload_id: str | None, items: list[dict[str, Any]],
                        request_id: int | None, at: float) -> None:
        self._db.executemany(
            "INSERT INTO records (request_id, kind, payload_id, received_at, data) VALUES (?,?,?,?,?)",
            [(request_id, kind, payload_id, at, orjson.dumps(item).decode()) for item in items])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock with readers
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored items in arrival order: {"kind", "payload_id", "received_at", "request_id", "data"}."""
        query = "SELECT kind, payload_id, received_at, request_id, data FROM records"
        rows = (self._db.execute(query + " WHERE kind = ? ORDER BY id", (kind,)) if kind
                else self._db.execute(query + " ORDER BY id"))
        return [{"kind": k, "payload_id": p, "received_at": at, "request_id": r, "data": orjson.loads(d)}
                for k, p, at, r, d in rows]

    def requests(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every request in arrival order, faulted and refused ones included (columns of the table)."""
        query = f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM requests"
        rows = (self._db.execute(query + " WHERE kind = ? ORDER BY id", (kind,)) if kind
                else self._db.execute(query + " ORDER BY id"))
        out = []
        for row in rows:
            request = dict(zip(_REQUEST_COLUMNS, row))
            request["api_key_present"] = bool(request["api_key_present"])
            out.append(request)
        return out
