"""The kiosk's durable state in one SQLite file.

Invariants this module holds:

- **Spent before open.** A credential's ``jti`` is committed to the ``spent`` table (WAL,
  ``synchronous=FULL``) in the same transaction as its decision's journal entry, before the
  caller is told to open anything. A power cut after the commit loses an opening, never a
  one-time guarantee. Rows are pruned once the credential has expired (plus clock skew).
- **Time floor.** The kiosk never believes its clock went backwards: ``now()`` is the largest of
  the wall clock corrected by the last server offset, the persisted floor, and the floor of
  this process plus elapsed monotonic time. Setting the clock back does not revive expired
  credentials. An authenticated sync resets the floor to the server's time.
- **Journal.** Every entry gets the next ``seq`` (monotonic, from 1) and is hash-chained:
  ``hash = sha256_hex(prev_hash + canonical_json({seq, type, occurred_at, data}))`` with
  ``prev_hash`` of the first entry 64 zeros. Entries stay until the server acknowledges them.

Several processes (the agent and ``concierge-kiosk verify``) may share the file: writes take
``BEGIN IMMEDIATE`` and SQLite's busy timeout serialises them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS_HASH = "0" * 64
#: Journal entries per upload request (well under the server's body limit).
UPLOAD_BATCH = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spent (
    jti TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    spent_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    data TEXT NOT NULL
);
"""


def canonical_json(value: Any) -> bytes:
    """The bytes hashed into the journal chain (sorted keys, no spaces, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, seq: int, type_: str, occurred_at: str, data: dict[str, Any]) -> str:
    body = {"seq": seq, "type": type_, "occurred_at": occurred_at, "data": data}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class AlreadySpent(Exception):
    """The jti was recorded spent by someone else (another process) first."""


class KioskStore:
    """Spent jtis, the synced state, the time floor and the journal of one kiosk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        floor = float(self.get_meta("time_floor") or 0.0)
        # This process's anchor: the persisted floor plus monotonic time elapsed since opening.
        self._anchor = (floor, time.monotonic())
        self._sync_cache: tuple[str | None, dict[str, Any] | None] = (None, None)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            self._set_meta(db, key, value)

    # -- clock --------------------------------------------------------------------------

    def now(self) -> float:
        """The kiosk's belief of the current time (never earlier than the floor)."""
        offset = float(self.get_meta("clock_offset") or 0.0)
        floor = float(self.get_meta("time_floor") or 0.0)
        anchor_time, anchor_mono = self._anchor
        return max(time.time() + offset, floor, anchor_time + (time.monotonic() - anchor_mono))

    def _advance_floor(self, db: sqlite3.Connection, now: float) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES ('time_floor', ?) ON CONFLICT(key) DO UPDATE "
            "SET value = CASE WHEN CAST(value AS REAL) < CAST(excluded.value AS REAL) "
            "THEN excluded.value ELSE value END",
            (repr(now),),
        )

    def touch_floor(self) -> float:
        """Persist the current time as the floor (the agent calls this periodically)."""
        now = self.now()
        with self._write() as db:
            self._advance_floor(db, now)
        return now

    # -- synced state --------------------------------------------------------------------

    def save_sync(self, document: dict[str, Any], server_time: float | None) -> None:
        """Store a sync document; an authenticated server time resets the clock and floor."""
        local = time.time()
        with self._write() as db:
            if server_time is not None:
                self._set_meta(db, "clock_offset", repr(server_time - local))
                self._set_meta(db, "time_floor", repr(server_time))
                synced_at = server_time
            else:
                synced_at = self.now()
            serial = int(self._meta_in(db, "sync_serial") or 0) + 1
            self._set_meta(db, "synced", json.dumps(document))
            self._set_meta(db, "synced_at", repr(synced_at))
            self._set_meta(db, "sync_serial", str(serial))
            db.execute("DELETE FROM spent WHERE expires_at < ?", (synced_at - 3600,))
        if server_time is not None:
            self._anchor = (server_time, time.monotonic())

    @staticmethod
    def _meta_in(db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def sync_serial(self) -> str | None:
        return self.get_meta("sync_serial")

    def synced(self) -> dict[str, Any] | None:
        serial = self.sync_serial()
        if serial != self._sync_cache[0]:
            raw = self.get_meta("synced")
            self._sync_cache = (serial, None if raw is None else json.loads(raw))
        return self._sync_cache[1]

    def synced_at(self) -> float | None:
        value = self.get_meta("synced_at")
        return None if value is None else float(value)

    # -- spent store ---------------------------------------------------------------------

    def is_spent(self, jti: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM spent WHERE jti = ?", (jti,)).fetchone()
        return row is not None

    def prune_spent(self, now: float, skew: float) -> int:
        with self._write() as db:
            cursor = db.execute("DELETE FROM spent WHERE expires_at + ? < ?", (skew, now))
        return cursor.rowcount

    def spent_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM spent").fetchone()[0])

    # -- journal -------------------------------------------------------------------------

    def _append(self, db: sqlite3.Connection, type_: str, data: dict[str, Any], now: float) -> int:
        row = db.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            seq = int(self._meta_in(db, "acked_through") or 0) + 1
            prev = self._meta_in(db, "acked_hash") or GENESIS_HASH
        else:
            seq, prev = int(row[0]) + 1, str(row[1])
        occurred_at = iso(now)
        digest = entry_hash(prev, seq, type_, occurred_at, data)
        db.execute(
            "INSERT INTO journal(seq, type, occurred_at, prev_hash, hash, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (seq, type_, occurred_at, prev, digest, json.dumps(data, sort_keys=True)),
        )
        self._advance_floor(db, now)
        return seq

    def journal_append(self, type_: str, data: dict[str, Any], now: float | None = None) -> int:
        moment = self.now() if now is None else now
        with self._write() as db:
            return self._append(db, type_, data, moment)

    def record_decision(
        self,
        data: dict[str, Any],
        *,
        spend: tuple[str, float] | None,
        now: float,
    ) -> int:
        """Journal a decision; with ``spend=(jti, exp)`` record the jti spent in the same commit.

        Raises AlreadySpent (nothing written) if the jti is already spent.
        """
        with self._write() as db:
            if spend is not None:
                try:
                    db.execute(
                        "INSERT INTO spent(jti, expires_at, spent_at) VALUES (?, ?, ?)",
                        (spend[0], spend[1], now),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadySpent(spend[0]) from None
            return self._append(db, "decision", data, now)

    def pending_entries(self, limit: int = 500) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, type, occurred_at, prev_hash, hash, data FROM journal "
                "ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {
                "seq": r[0],
                "type": r[1],
                "occurred_at": r[2],
                "prev_hash": r[3],
                "hash": r[4],
                "data": json.loads(r[5]),
            }
            for r in rows
        ]

    def acknowledge(self, accepted_through: int) -> None:
        """Drop entries the server holds; keep the chain head for the next entry."""
        with self._write() as db:
            current = int(self._meta_in(db, "acked_through") or 0)
            if accepted_through <= current:
                return
            row = db.execute(
                "SELECT hash FROM journal WHERE seq = ?", (accepted_through,)
            ).fetchone()
            if row is None:
                return
            self._set_meta(db, "acked_through", str(accepted_through))
            self._set_meta(db, "acked_hash", str(row[0]))
            db.execute("DELETE FROM journal WHERE seq <= ?", (accepted_through,))

    def acked_through(self) -> int:
        return int(self.get_meta("acked_through") or 0)

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(seq) FROM journal").fetchone()
        return int(row[0]) if row[0] is not None else self.acked_through()
