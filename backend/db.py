"""Engine and sessions. One request-scoped session is the unit of work.

Services never commit: ``session_scope`` (workers, CLI) and the request dependency
(``provide_session``) commit once at the end or roll back, so a client never gets a 2xx
for work that was not committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.settings import Settings

WRITE_LOCK_TIMEOUT_SECONDS = 30.0  # as long as SQLite's own wait (``timeout`` below)
_HELD = "concierge.write_lock"
_KEPT = "concierge.kept_rows"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        # aiosqlite's default deferred transactions upgrade read locks to write locks late and
        # deadlock under concurrency; BEGIN IMMEDIATE serialises writers up front instead.
        _serialise_transactions(engine)

        @event.listens_for(engine.sync_engine, "connect")
        def _no_pysqlite_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _serialise_transactions(engine: AsyncEngine) -> None:
    """Queue this process's SQLite transactions on an asyncio lock, then ``BEGIN IMMEDIATE``.

    Why: SQLite lets one writer in at a time, and a connection that finds the write lock taken
    waits in SQLite's busy handler, which sleeps in growing steps (up to 100 ms) before it looks
    again, so under load the lock sits idle while waiters sleep. Queued on the event loop
    instead, the next transaction starts the moment the previous one ends. The lock is taken when
    a transaction begins and released at its COMMIT or ROLLBACK (the event fires just before the
    statement completes; a successor that arrives first meets the busy handler's first, 1 ms,
    step) or, failing those, when its connection goes back to the pool or is invalidated. Other
    processes on the same file still meet the busy handler.
    """
    locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
        weakref.WeakKeyDictionary()
    )

    def begin(conn: Any) -> None:
        loop = asyncio.get_running_loop()
        lock = locks.setdefault(loop, asyncio.Lock())
        record = conn.connection.info
        try:
            await_(asyncio.wait_for(lock.acquire(), WRITE_LOCK_TIMEOUT_SECONDS))
        except TimeoutError:
            raise sqlite3.OperationalError("database is locked (this process)") from None
        record[_HELD] = lock
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    def release(info: dict[str, Any]) -> None:
        lock = info.pop(_HELD, None)
        if lock is not None:
            lock.release()

    def transaction_ended(conn: Any) -> None:
        release(conn.connection.info)

    def connection_returned(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        release(record.info)  # a transaction that ended without COMMIT or ROLLBACK events

    event.listen(engine.sync_engine, "begin", begin)
    event.listen(engine.sync_engine, "commit", transaction_ended)
    event.listen(engine.sync_engine, "rollback", transaction_ended)
    event.listen(engine.sync_engine.pool, "checkin", connection_returned)
    event.listen(engine.sync_engine.pool, "invalidate", connection_returned)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


class Database:
    """The engine and session factory of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database_url)
        self.sessions = sessionmaker(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: commit on success, roll back on any exception."""
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def dispose(self) -> None:
        await self.engine.dispose()


def keep_loaded(session: AsyncSession, *objects: object) -> None:
    """Keep loaded rows alive for the rest of the session.

    SQLAlchemy's identity map holds objects weakly: a row a service loaded and dropped is read
    again when the response view asks for it. A request's hot path keeps such rows here instead
    of paying a second query (the session, and this list, end with the request).
    """
    kept: list[object] = session.info.setdefault(_KEPT, [])
    kept.extend(o for o in objects if o is not None)


async def insert_if_absent(session: AsyncSession, model: Any, values: dict[str, Any]) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING``; True when the row was inserted.

    "Exactly once" rules live in unique constraints; this asks the database instead of
    catching ``IntegrityError`` (which would poison the surrounding transaction).
    """
    bind = session.bind
    table = model.__table__
    if bind is not None and bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement: Any = pg_insert(table).values(**values).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table).values(**values).on_conflict_do_nothing()
    result = await session.exec(statement)
    return bool(getattr(result, "rowcount", 0) == 1)
