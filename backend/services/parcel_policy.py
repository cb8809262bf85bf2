"""Parcel policy: residents' delivery holds, and the scheduled jobs (expired reservations,
pickup reminders outside quiet hours and holds, the remove-to-overflow list).

The jobs register with ``backend.services.policy`` at import (``backend.app`` imports this
module); the policy scheduler runs them in one process at a time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import (
    DeliveryHold,
    Parcel,
    Property,
    Unit,
)
from backend.runtime import Runtime
from backend.services import policy
from backend.services.parcels import (
    RESERVATION_MINUTES,
    cancel_parcel,
    is_postgres,
    parcel_event,
)
from backend.services.properties import policy_of


async def set_hold(
    session: AsyncSession, actor: Actor, until: datetime | None, now: datetime
) -> list[DeliveryHold]:
    """Vacation hold on every unit the caller lives in: reminders pause until ``until``."""
    unit_ids = sorted(actor.unit_ids)
    if not unit_ids:
        raise errors.Forbidden("only residents put deliveries on hold")
    holds = []
    for unit_id in unit_ids:
        unit = await session.get(Unit, unit_id)
        if unit is None:
            continue
        hold = await session.get(DeliveryHold, unit_id)
        if until is None or until <= now:
            if hold is not None:
                await session.delete(hold)
            continue
        if hold is None:
            hold = DeliveryHold(
                unit_id=unit_id, property_id=unit.property_id, until=until, set_by=actor.user_id
            )
        hold.until, hold.set_by = until, actor.user_id
        session.add(hold)
        holds.append(hold)
    await session.flush()
    return holds


async def holds_of(session: AsyncSession, actor: Actor, now: datetime) -> list[DeliveryHold]:
    if not actor.unit_ids:
        return []
    return list(
        (
            await session.exec(
                select(DeliveryHold).where(
                    col(DeliveryHold.unit_id).in_(sorted(actor.unit_ids)),
                    col(DeliveryHold.until) > now,
                )
            )
        ).all()
    )


# ---------------------------------------------------------------------------------------------
# Policy jobs


def _claim(session: AsyncSession, statement: Any) -> Any:
    """Rows a policy job works on: locked, and skipped when another run has them (PostgreSQL);
    two concurrent runs (the server's job and the CLI) never act twice on one parcel."""
    if is_postgres(session):
        return statement.with_for_update(skip_locked=True)
    return statement


async def _unclaimed_since(
    session: AsyncSession, prop: Property, marker: Any, cutoff: datetime
) -> list[Parcel]:
    """Deposited parcels waiting since ``cutoff`` that a job has not marked yet (``marker`` null)."""
    rows = await session.exec(
        _claim(session, select(Parcel)).where(
            Parcel.property_id == prop.id,
            Parcel.state == "deposited",
            col(marker).is_(None),
            col(Parcel.deposited_at) <= cutoff,
        )
    )
    return list(rows.all())


async def _reminders(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """A second notification after ``reminder_after_days``, never in quiet hours or on hold."""
    rules = policy_of(prop)
    if policy.in_quiet_hours(prop, rules, now):
        return []
    held = set(
        (
            await session.exec(
                select(DeliveryHold.unit_id).where(
                    DeliveryHold.property_id == prop.id, col(DeliveryHold.until) > now
                )
            )
        ).all()
    )
    rows = await _unclaimed_since(
        session, prop, Parcel.reminded_at, now - timedelta(days=rules.reminder_after_days)
    )
    actions = []
    for parcel in rows:
        if parcel.unit_id in held or parcel.deposited_at is None:
            continue
        days = int((now - parcel.deposited_at).total_seconds() // 86400)
        parcel.reminded_at = now
        session.add(parcel)
        await session.flush()
        await parcel_event(
            session, parcel, "parcel.reminder", "system", notify=True, occurred_at=now, days=days
        )
        actions.append(
            {
                "action": "parcel.reminder",
                "property_id": prop.id,
                "parcel_id": parcel.id,
                "unit_id": parcel.unit_id,
                "days": days,
            }
        )
    return actions


async def _overflow_list(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """Parcels unclaimed ``overflow_after_days`` go on staff's "remove to overflow" list."""
    rules = policy_of(prop)
    rows = await _unclaimed_since(
        session, prop, Parcel.overflow_due_at, now - timedelta(days=rules.overflow_after_days)
    )
    actions = []
    for parcel in rows:
        parcel.overflow_due_at = now
        session.add(parcel)
        await session.flush()
        await parcel_event(
            session,
            parcel,
            "parcel.overflow_due",
            "system",
            notify=False,
            occurred_at=now,
            residents_see=False,
        )
        actions.append(
            {
                "action": "parcel.overflow_due",
                "property_id": prop.id,
                "parcel_id": parcel.id,
                "unit_id": parcel.unit_id,
            }
        )
    return actions


async def _expire_reservations(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """A door that never closed: the reservation is released after ``RESERVATION_MINUTES``."""
    cutoff = now - timedelta(minutes=RESERVATION_MINUTES)
    rows = (
        await session.exec(
            _claim(session, select(Parcel)).where(
                Parcel.property_id == prop.id,
                Parcel.state == "assigned",
                col(Parcel.assigned_at) <= cutoff,
            )
        )
    ).all()
    actions = []
    for parcel in rows:
        await cancel_parcel(session, parcel, "system", now, "door_never_closed")
        actions.append(
            {"action": "parcel.cancelled", "property_id": prop.id, "parcel_id": parcel.id}
        )
    return actions


def _register() -> None:
    for job in (_expire_reservations, _reminders, _overflow_list):
        if job not in policy.POLICY_JOBS:
            policy.POLICY_JOBS.append(job)


_register()
