"""Appending to the Event table, the audit trail and realtime source, and verifying its chain.

Ordering invariant: event ids must become visible in increasing order, or a realtime reader
resuming "after 102" would skip 101 committed a moment later, and two concurrent appends
would fork the per-property hash chain. ``record_event`` therefore serialises appends until
commit: on PostgreSQL with a transaction-scoped advisory lock (released at COMMIT/ROLLBACK),
on SQLite by the database write lock every writer takes (``BEGIN IMMEDIATE``). Callers append
events as the last step of their transaction to keep that critical section short.

Every event also enqueues one ``push`` outbox row in the same transaction; the push dispatcher
decides who (if anyone) is notified, so nothing committed is ever skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
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


async def _serialise_appends(session: AsyncSession) -> None:
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.exec(text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=EVENT_APPEND_LOCK))  # type: ignore[call-overload]


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
    """Append one event (and its push outbox row) to the caller's transaction."""
    await _serialise_appends(session)
    last = (
        await session.exec(
            select(Event.hash)
            .where(Event.property_id == property_id)
            .order_by(col(Event.id).desc())
            .limit(1)
        )
    ).first()
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
    session.add(event)
    await session.flush()
    if notify:
        session.add(Outbox(topic="push", event_id=event.id, next_attempt_at=now))
        await session.flush()
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
