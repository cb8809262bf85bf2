"""Appending to the Event table, the audit trail and realtime source, and verifying its chain.

Ordering invariant: event ids must become visible in increasing order, or a realtime reader
resuming "after 102" would skip 101 committed a moment later, and two concurrent appends
would fork the per-property hash chain. ``record_event`` therefore serialises appends until
commit: on PostgreSQL with a transaction-scoped advisory lock (released at COMMIT/ROLLBACK),
on SQLite by the database write lock every writer takes (``BEGIN IMMEDIATE``). Callers append
events as the last step of their transaction to keep that critical section short.

Why a single lock for all properties, not one per property: the realtime relay (realtime/relay.py)
tails the whole table by id. With per-property locks, property P's transaction could commit id
102 while property Q's transaction still holds 101 uncommitted, and the relay would pass 101.
One lock makes "committed ids are a prefix of allocated ids, in order" true globally; the cost
is that event appends (only the tail of each transaction) never run in parallel.

Both halves of the proof are in tests/test_realtime_ordering.py: on PostgreSQL a second
transaction trying to append while the first one is still open waits for it, a reader polling
``id > last`` in between sees neither, and after both commit it has seen every id, in order,
with an unforked chain; a control test shows the same reader does skip an id when rows are
inserted without ``record_event``.

Every event also enqueues one ``push`` outbox row in the same transaction; the push dispatcher
decides who (if anyone) is notified, so nothing committed is ever skipped.

Low-latency hand-off: ``record_event`` notes each appended event (and the id committed just
before it) on the session; after the transaction commits, ``COMMIT_LISTENERS`` are called with
them (the realtime relay publishes at once instead of waiting for its next poll). Nothing is
announced for a transaction that rolls back. Listeners are an optimisation only: the table is
the source of truth and the relay's poll finds anything a listener never heard about.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, text
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import Event, Outbox
from backend.models.base import utcnow

GENESIS = "0" * 64
EVENT_APPEND_LOCK = 0x436F6E63  # advisory lock key ("Conc")

# Event types that are worth a push notification; the dispatcher filters further by preference.
SEVERITY = {
    "door.forced": "critical",
    "kiosk.tamper": "critical",
    "emergency.used": "critical",
    "credential.double_spent": "critical",
    "kiosk.journal_forked": "critical",
    "door.held_open": "warning",
    "key.overdue": "warning",
    "pin.burst": "warning",
    "parcel.conflict": "warning",
}


def _canonical(event: Event, prev_hash: str) -> bytes:
    body = {
        "prev_hash": prev_hash,
        "property_id": event.property_id,
        "type": event.type,
        "severity": event.severity,
        "actor": event.actor,
        "subject": event.subject,
        "unit_id": event.unit_id,
        "user_id": event.user_id,
        "payload": event.payload,
        "occurred_at": event.occurred_at.astimezone(UTC).isoformat(),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def event_hash(event: Event, prev_hash: str) -> str:
    return hashlib.sha256(_canonical(event, prev_hash)).hexdigest()


# Called after a commit that appended events: (engine, prev_id, events). ``prev_id`` is the
# id of the last event committed before the first of ``events`` (appends are serialised, so
# it is exact); listeners run on the event loop thread and must not block.
CommitListener = Callable[[Any, int, list[dict[str, Any]]], None]
COMMIT_LISTENERS: list[CommitListener] = []
_PENDING = "concierge.appended_events"


async def serialise_appends(session: AsyncSession) -> None:
    """Take the append lock (held until COMMIT/ROLLBACK) on PostgreSQL; SQLite's write lock
    (``BEGIN IMMEDIATE``) already serialises every writer. Re-entrant within a transaction."""
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.exec(text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=EVENT_APPEND_LOCK))  # type: ignore[call-overload]


_serialise_appends = serialise_appends


@sa_event.listens_for(Session, "after_commit")
def _announce_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if not pending or not COMMIT_LISTENERS:
        return
    prev_id, events = pending
    engine = session.get_bind()
    engine = getattr(engine, "engine", engine)
    for listener in list(COMMIT_LISTENERS):
        try:
            listener(engine, prev_id, events)
        except Exception:  # a listener must never turn a committed transaction into an error
            logging.getLogger("concierge.events").exception("commit listener failed")


@sa_event.listens_for(Session, "after_soft_rollback")
def _forget_rollback(session: Session, previous_transaction: Any) -> None:
    # Any rollback, a savepoint's included: forget what we noted. Events appended later in the
    # same transaction are announced with a ``prev_id`` that no reader expects, so the relay
    # reads the table instead of trusting this announcement.
    session.info.pop(_PENDING, None)


def _snapshot(event: Event) -> dict[str, Any]:
    """What listeners need, detached from the session (attributes may expire at commit)."""
    return {
        "id": event.id,
        "property_id": event.property_id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "payload": event.payload,
        "unit_id": event.unit_id,
        "user_id": event.user_id,
    }


EVENT_TABLE: Any = Event.__table__  # type: ignore[attr-defined]
OUTBOX_TABLE: Any = Outbox.__table__  # type: ignore[attr-defined]

# Built once: every kiosk request appends an event, and building and caching a statement costs
# more than running it on SQLite. Core statements, not ORM flushes, for the same reason; the
# appended row is never changed afterwards, so nothing needs it in the session.
_CHAIN_HEAD = (
    select(EVENT_TABLE.c.hash)
    .where(EVENT_TABLE.c.property_id == bindparam("property_id"))
    .order_by(EVENT_TABLE.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
# Under the lock, the highest committed id is the one that precedes ours (one round trip for
# both on the first append of a transaction).
_PREV_ID_AND_HEAD = select(select(func.max(EVENT_TABLE.c.id)).scalar_subquery(), _CHAIN_HEAD)
_HEAD = select(_CHAIN_HEAD)
_EVENT_COLUMNS = [c.name for c in EVENT_TABLE.columns if c.name != "id"]
_OUTBOX_COLUMNS = [c.name for c in OUTBOX_TABLE.columns if c.name != "id"]
_INSERT_EVENT = insert(EVENT_TABLE).returning(EVENT_TABLE.c.id)
_INSERT_OUTBOX = insert(OUTBOX_TABLE)


def _insert_event_and_outbox() -> Any:
    """PostgreSQL: the event and its outbox row in one statement (a data-modifying CTE).

    The append holds the deployment-wide append lock until commit, and every round trip under
    it is one that every other appender, in every process, waits through."""
    appended = (
        insert(EVENT_TABLE)
        .values({name: bindparam(name, type_=EVENT_TABLE.c[name].type) for name in _EVENT_COLUMNS})
        .returning(EVENT_TABLE.c.id)
        .cte("appended")
    )
    outbox_row = select(
        *(
            appended.c.id
            if name == "event_id"
            else bindparam(f"outbox_{name}", type_=OUTBOX_TABLE.c[name].type)
            for name in _OUTBOX_COLUMNS
        )
    )
    return (
        insert(OUTBOX_TABLE)
        .from_select(_OUTBOX_COLUMNS, outbox_row)
        .returning(OUTBOX_TABLE.c.event_id)
    )


_INSERT_EVENT_AND_OUTBOX = _insert_event_and_outbox()


async def record_event(
    session: AsyncSession,
    *,
    property_id: str,
    type: str,
    actor: str,
    subject: str = "",
    payload: dict[str, Any] | None = None,
    unit_id: str | None = None,
    user_id: str | None = None,
    occurred_at: datetime | None = None,
    severity: str | None = None,
    notify: bool = True,
) -> Event:
    """Append one event (and its push outbox row) to the caller's transaction.

    The returned ``Event`` carries its id but is not in the session (the row is final)."""
    await serialise_appends(session)
    connection = await session.connection()
    pending = session.info.get(_PENDING)
    if pending is None:
        prev_id, last = (
            await connection.execute(_PREV_ID_AND_HEAD, {"property_id": property_id})
        ).one()
        prev_id = prev_id or 0
    else:
        last = (await connection.execute(_HEAD, {"property_id": property_id})).scalar_one()
    prev_hash = last or GENESIS
    now = utcnow()
    event = Event(
        property_id=property_id,
        type=type,
        severity=severity or SEVERITY.get(type, "info"),
        actor=actor,
        subject=subject,
        unit_id=unit_id,
        user_id=user_id,
        payload=dict(payload or {}),
        occurred_at=occurred_at or now,
        recorded_at=now,
        prev_hash=prev_hash,
        hash="",
    )
    event.hash = event_hash(event, prev_hash)
    row = {name: getattr(event, name) for name in _EVENT_COLUMNS}
    if notify:
        outbox = Outbox(topic="push", event_id=0, next_attempt_at=now, created_at=now)
        outbox_row = {name: getattr(outbox, name) for name in _OUTBOX_COLUMNS}
    if notify and connection.dialect.name == "postgresql":
        row.update({f"outbox_{name}": value for name, value in outbox_row.items()})
        event.id = (await connection.execute(_INSERT_EVENT_AND_OUTBOX, row)).scalar_one()
    else:
        event.id = (await connection.execute(_INSERT_EVENT, row)).scalar_one()
        if notify:
            await connection.execute(_INSERT_OUTBOX, {**outbox_row, "event_id": event.id})
    if pending is None:
        session.info[_PENDING] = (int(prev_id), [_snapshot(event)])
    else:
        pending[1].append(_snapshot(event))
    return event


class ChainReport:
    def __init__(self, checked: int, valid: bool, first_bad_id: int | None) -> None:
        self.checked = checked
        self.valid = valid
        self.first_bad_id = first_bad_id


async def verify_chain(session: AsyncSession, property_id: str) -> ChainReport:
    """Recompute the property's hash chain; the first event that does not match is reported."""
    prev = GENESIS
    checked = 0
    rows: Sequence[Event] = (
        await session.exec(
            select(Event).where(Event.property_id == property_id).order_by(col(Event.id))
        )
    ).all()
    for event in rows:
        checked += 1
        if event.prev_hash != prev or event_hash(event, prev) != event.hash:
            return ChainReport(checked, False, event.id)
        prev = event.hash
    return ChainReport(checked, True, None)
