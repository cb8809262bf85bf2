"""Event ids are safe to resume from: forcing the race between concurrent appends.

On PostgreSQL an id is allocated at INSERT, not at COMMIT. If transaction A takes id 101 and
commits *after* B took and committed 102, a reader tailing ``id > last`` sees 102, moves on, and
never sees 101; and A and B, each reading the same last hash, fork the property's chain.
``record_event`` serialises appends until commit (backend/services/events.py); these tests force
that interleaving and check what a reader sees. The control test shows the hazard is real: the
same interleaving with rows inserted without ``record_event`` makes the reader skip an id.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from backend.models import Event
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services.events import GENESIS, event_hash, record_event, verify_chain
from backend.settings import Settings

PROPERTY = "p-ordering"


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime.create(settings)
    yield rt
    await rt.db.dispose()


def _postgres_only(runtime: Runtime) -> None:
    if runtime.db.is_sqlite:
        pytest.skip("the id-allocation race exists only on PostgreSQL (SQLite has one writer)")


async def _read_after(runtime: Runtime, after: int) -> list[int]:
    async with runtime.db.sessions() as session:
        rows = await session.exec(
            select(Event.id).where(col(Event.id) > after).order_by(col(Event.id))
        )
        return [int(i) for i in rows.all() if i is not None]


async def _waiting_on_advisory_lock(runtime: Runtime) -> bool:
    async with runtime.db.sessions() as session:
        waiting = (
            await session.exec(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")  # type: ignore[call-overload]
            )
        ).one()
        return bool(waiting[0])


async def test_second_append_waits_for_the_first_commit(runtime: Runtime) -> None:
    _postgres_only(runtime)
    seen: list[int] = []
    last = 0

    async def poll() -> None:
        nonlocal last
        for event_id in await _read_after(runtime, last):
            seen.append(event_id)
            last = event_id

    first = runtime.db.sessions()
    async with first as session_a:
        event_a = await record_event(session_a, property_id=PROPERTY, type="test.a", actor="system")
        b_committed = asyncio.Event()

        async def second() -> int:
            async with runtime.db.session() as session_b:
                event_b = await record_event(
                    session_b, property_id=PROPERTY, type="test.b", actor="system"
                )
                assert event_b.id is not None
                event_b_id = event_b.id
            b_committed.set()
            return event_b_id

        task_b = asyncio.create_task(second())
        # B tries to append and commit while A is still open: it must wait for A's lock.
        for _ in range(200):
            if await _waiting_on_advisory_lock(runtime):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the second append never waited for the first transaction")
        await poll()
        assert seen == []  # nothing from either transaction is visible yet
        assert not b_committed.is_set()
        await session_a.commit()  # the first appender commits last of the two attempts
    event_b_id = await task_b
    await poll()
    assert event_a.id is not None
    assert seen == [event_a.id, event_b_id]
    assert event_a.id < event_b_id
    async with runtime.db.sessions() as session:
        report = await verify_chain(session, PROPERTY)
    assert report.valid
    assert report.checked == 2


async def test_control_unserialised_inserts_let_a_reader_skip_an_id(runtime: Runtime) -> None:
    """Without record_event's lock the race happens: proof that the test above can fail."""
    _postgres_only(runtime)

    def bare(kind: str) -> Event:
        now = utcnow()
        event = Event(
            property_id=PROPERTY,
            type=kind,
            actor="system",
            payload={},
            occurred_at=now,
            recorded_at=now,
            prev_hash=GENESIS,
            hash="",
        )
        event.hash = event_hash(event, GENESIS)
        return event

    async with runtime.db.sessions() as session_a:
        event_a = bare("test.a")
        session_a.add(event_a)
        await session_a.flush()  # id allocated, not committed
        async with runtime.db.session() as session_b:
            event_b = bare("test.b")
            session_b.add(event_b)
        seen = await _read_after(runtime, 0)
        assert seen == [event_b.id]
        last = seen[-1]
        await session_a.commit()
    assert event_a.id is not None
    assert event_a.id < last
    assert await _read_after(runtime, last) == []  # the reader never sees event_a
    async with runtime.db.sessions() as session:
        assert not (await verify_chain(session, PROPERTY)).valid  # and the chain forked


async def test_many_concurrent_appenders_and_a_tailing_reader(runtime: Runtime) -> None:
    """Random commit delays: the tailing reader sees every committed id, in order, once."""
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.03) for _ in range(25)]
    committed: list[int] = []
    stop = asyncio.Event()
    tailed: list[int] = []

    async def tail() -> None:
        last = 0
        while True:
            done = stop.is_set()
            for event_id in await _read_after(runtime, last):
                tailed.append(event_id)
                last = event_id
            if done:
                return
            await asyncio.sleep(0.005)

    async def append(index: int, delay: float) -> None:
        async with runtime.db.session() as session:
            event = await record_event(
                session,
                property_id=PROPERTY if index % 2 else PROPERTY + "-2",
                type="test.concurrent",
                actor="system",
            )
            await asyncio.sleep(delay)  # hold the transaction open before COMMIT
        assert event.id is not None
        committed.append(event.id)

    reader = asyncio.create_task(tail())
    await asyncio.gather(*(append(i, d) for i, d in enumerate(delays)))
    stop.set()
    await reader
    assert tailed == sorted(committed)
    async with runtime.db.sessions() as session:
        for property_id in (PROPERTY, PROPERTY + "-2"):
            assert (await verify_chain(session, property_id)).valid
