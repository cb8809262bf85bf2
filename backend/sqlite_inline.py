"""SQLite statements run on the event loop's own thread, not on aiosqlite's worker thread.

Why: aiosqlite hands every statement to a thread and the result back. A statement of this
workload takes tens of microseconds inside SQLite; the two hand-offs cost more CPU than that,
and because a process's SQLite transactions run one at a time (``db._serialise_transactions``),
the event loop sits idle during every hand-off of the transaction in flight. Run inline, a
transaction costs only its statements' own time, and nothing else waits on a thread.

What keeps the loop from blocking: SQLite only waits when another connection holds a lock.
Inside this process, transactions queue on an asyncio lock before ``BEGIN IMMEDIATE``; a write
lock held by another process (the CLI, a ``concierge worker``) is waited for with
``asyncio.sleep`` between tries of ``BEGIN IMMEDIATE`` (``begin_immediate``), never inside
SQLite's busy handler, because these connections have no busy timeout. Reads in WAL mode never
wait. What still runs on the loop: a statement's own CPU time and a commit's disk write (no
fsync with ``synchronous=NORMAL`` except at WAL checkpoints). A long report therefore holds the
loop for its duration: the embedded setup's price; PostgreSQL is the scale-out path.

The classes below are the part of aiosqlite's interface that SQLAlchemy's ``aiosqlite`` dialect
uses (``connection.cursor()``, awaitable execute/fetch/commit/rollback/close); the dialect
takes them through ``create_async_engine(async_creator=...)``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# Another process holding the write lock: retry BEGIN IMMEDIATE after these pauses (seconds),
# the last one repeated, for up to ``timeout`` seconds in all. Short, because the other
# process is usually ``concierge worker`` (or another server) whose transactions take about a
# millisecond, and every transaction of this process queues behind the one that waits: pauses
# growing to 50 ms made a server sharing the file with a worker wait far longer than the
# worker's transactions ever took. A try costs a few microseconds.
RETRY_PAUSES = (0.0005, 0.001, 0.002)


class InlineCursor:
    """An aiosqlite-style cursor whose awaitables complete at once."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _RunNow:
    """Stands in for aiosqlite's request queue, used by SQLAlchemy's isolation-level setter."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # handed to the awaiting caller, as aiosqlite does
            future.set_exception(exc)


class InlineConnection:
    """An aiosqlite-style connection over a plain ``sqlite3`` connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._tx = _RunNow()

    @property
    def _connection(self) -> sqlite3.Connection | None:  # SQLAlchemy checks it before COMMIT
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:  # typeshed narrows it to three literals
        self._conn.isolation_level = value

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        return InlineCursor(self._conn.execute(sql, parameters))

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()

    def stop(self) -> None:
        """SQLAlchemy's forced close (a connection dropped outside a greenlet)."""
        self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    def begin_immediate(self, timeout: float, pause: Callable[[float], Any]) -> None:
        """``BEGIN IMMEDIATE``; while another process holds the write lock, ``pause`` and retry.

        ``pause(seconds)`` is supplied by the caller (a synchronous SQLAlchemy event in a
        greenlet, which awaits ``asyncio.sleep``); after ``timeout`` seconds the busy error is
        raised.
        """
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                if time.monotonic() >= deadline:
                    raise
            pause(RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)])
            attempt += 1


def connector(path: str) -> Callable[[], Any]:
    """``async_creator`` for ``create_async_engine``: inline connections to the file ``path``."""

    async def connect() -> InlineConnection:
        # No busy timeout (waits happen in begin_immediate, on the loop); autocommit mode, so
        # the only transactions are the ones SQLAlchemy's begin event opens with BEGIN IMMEDIATE.
        connection = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        return InlineConnection(connection)

    return connect
