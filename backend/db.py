"""Engine and sessions. One request-scoped session is the unit of work.

Services never commit: ``session_scope`` (workers, CLI) and the request dependency
(``provide_session``) commit once at the end or roll back, so a client never gets a 2xx
for work that was not committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import sqlite_inline
from backend.settings import Settings

WRITE_LOCK_TIMEOUT_SECONDS = 30.0  # then the request answers 503 (database busy)
_HELD = "concierge.write_lock"
_KEPT = "concierge.kept_rows"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=0")  # waits happen on the loop: sqlite_inline
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(database_url: str, pool_size: int = 10) -> AsyncEngine:
    """An async engine; SQLite runs inline (``sqlite_inline``) with WAL and foreign keys.

    PostgreSQL gets a fixed pool (no overflow): connections opened past the pool under a burst
    are closed again as they come back, so a busy server would spend its CPU (and PostgreSQL
    its forks) connecting exactly when it is furthest behind; waiting for a pooled connection
    is cheaper. Each connection is pinged at checkout, so a restarted server costs no request.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = url.database or ":memory:"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, async_creator=sqlite_inline.connector(path))
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        # SQLite's default deferred transactions upgrade read locks to write locks late and
        # deadlock under concurrency; BEGIN IMMEDIATE serialises writers up front instead.
        _serialise_transactions(engine, path)
        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_pre_ping=True
    )


def _read_only_engine(database_url: str) -> AsyncEngine:
    """Inline SQLite connections in autocommit mode without the write lock, refusing writes."""
    path = make_url(database_url).database or ":memory:"
    engine = create_async_engine(database_url, async_creator=sqlite_inline.connector(path))

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only=ON")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    event.listen(engine.sync_engine, "connect", pragmas)
    return engine


# One queue per database file and event loop, shared by every engine of the process.
_write_locks: dict[str, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]] = {}


def _write_lock(path: str) -> asyncio.Lock:
    per_loop = _write_locks.setdefault(path, weakref.WeakKeyDictionary())
    return per_loop.setdefault(asyncio.get_running_loop(), asyncio.Lock())


def _serialise_transactions(engine: AsyncEngine, path: str) -> None:
    """Queue this process's SQLite transactions on an asyncio lock, then ``BEGIN IMMEDIATE``.

    Why: SQLite lets one writer in at a time. Queued on the event loop, the next transaction
    starts the moment the previous one ends, and no statement ever waits inside SQLite (which
    would block the loop: statements run on it, see ``sqlite_inline``). The lock is taken when a
    transaction begins and released at its COMMIT or ROLLBACK or, failing those, when its
    connection goes back to the pool or is invalidated. Another process holding the file's
    write lock is waited for by ``InlineConnection.begin_immediate``, with asyncio sleeps.
    """

    def pause(seconds: float) -> None:
        await_(asyncio.sleep(seconds))

    def begin(conn: Any) -> None:
        lock = _write_lock(path)
        record = conn.connection.info
        started = time.monotonic()
        try:
            await_(asyncio.wait_for(lock.acquire(), WRITE_LOCK_TIMEOUT_SECONDS))
        except TimeoutError:
            busy = sqlite3.OperationalError("database is locked (this process)")
            raise sa_exc.OperationalError("BEGIN IMMEDIATE", None, busy) from None
        record[_HELD] = lock
        left = WRITE_LOCK_TIMEOUT_SECONDS - (time.monotonic() - started)
        try:
            conn.connection.driver_connection.begin_immediate(left, pause)
        except sqlite3.OperationalError as exc:  # as SQLAlchemy wraps driver errors: a 503
            release(record)
            raise sa_exc.OperationalError("BEGIN IMMEDIATE", None, exc) from exc
        except BaseException:
            release(record)
            raise

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
        self.engine = create_engine(settings.database_url, settings.database_pool_size)
        self.sessions = sessionmaker(self.engine)
        self._read_engine: AsyncEngine | None = None

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

    @asynccontextmanager
    async def reads(self) -> AsyncIterator[AsyncSession]:
        """Reads that take no lock: for background work that plans before it writes.

        On SQLite every transaction of ``session`` holds the database's one write lock from
        its first statement, so a worker that works out recipients inside one makes every
        request of the server wait for it. Here each statement runs on its own (autocommit,
        WAL: readers never wait and never block), so what was read may change before the
        write: callers must write conditionally (a lease, a state check). On PostgreSQL this
        is a plain transaction, rolled back at the end. Writes here are refused on SQLite
        (``query_only``).
        """
        if not self.is_sqlite:
            async with self.sessions() as session:
                try:
                    yield session
                finally:
                    await session.rollback()
            return
        if self._read_engine is None:
            self._read_engine = _read_only_engine(self.settings.database_url)
        async with AsyncSession(self._read_engine, expire_on_commit=False) as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._read_engine is not None:
            await self._read_engine.dispose()


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
