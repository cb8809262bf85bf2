"""What staff do with parcels and what they see: overflow moves, returns to the carrier,
office hand-overs, a parcel's custody history, compartment occupancy and the weekly report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import (
    Compartment,
    Event,
    Kiosk,
    Parcel,
    PinAttempt,
    Unit,
)
from backend.models.parcel import ACTIVE_STATES
from backend.scoping import get_in_property, staff_property
from backend.services.parcels import (
    NEARLY_FULL_RATIO,
    SIZE_RANK,
    hand_to_office,
    is_postgres,
    mark_picked_up,
    parcel_event,
    release_compartment,
)
from backend.services.properties import policy_of


async def staff_parcel(session: AsyncSession, actor: Actor, parcel_id: str) -> Parcel:
    return await get_in_property(session, actor, Parcel, parcel_id, label="Parcel")


async def _staff_parcel_locked(session: AsyncSession, actor: Actor, parcel_id: str) -> Parcel:
    parcel = await staff_parcel(session, actor, parcel_id)
    if is_postgres(session):
        await session.refresh(parcel, with_for_update=True)
    return parcel


async def move_to_overflow(
    session: AsyncSession, actor: Actor, parcel_id: str, location: str, now: datetime
) -> Parcel:
    parcel = await _staff_parcel_locked(session, actor, parcel_id)
    if parcel.state == "overflowed":
        return parcel
    if parcel.state not in ("deposited", "assigned", "announced"):
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}")
    return await hand_to_office(session, parcel, f"user:{actor.user_id}", now, location=location)


async def return_to_carrier(
    session: AsyncSession, actor: Actor, parcel_id: str, reason: str, now: datetime
) -> Parcel:
    parcel = await _staff_parcel_locked(session, actor, parcel_id)
    if parcel.state == "returned":
        return parcel
    if parcel.state not in ("deposited", "assigned", "announced", "overflowed"):
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}")
    was_in = parcel.compartment_id if parcel.state in ACTIVE_STATES else None
    parcel.state = "returned"
    parcel.returned_at = now
    parcel.location = None
    session.add(parcel)
    await session.flush()
    await release_compartment(session, was_in)
    await parcel_event(
        session,
        parcel,
        "parcel.returned",
        f"user:{actor.user_id}",
        notify=True,
        occurred_at=now,
        reason=reason,
    )
    return parcel


async def hand_over(session: AsyncSession, actor: Actor, parcel_id: str, now: datetime) -> Parcel:
    """Staff handed an office (overflowed) parcel to the resident."""
    parcel = await _staff_parcel_locked(session, actor, parcel_id)
    if parcel.state == "picked_up":
        return parcel
    if parcel.state != "overflowed":
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}, not at the office")
    await mark_picked_up(session, parcel, f"user:{actor.user_id}", now, channel="office")
    return parcel


async def custody(session: AsyncSession, actor: Actor, parcel_id: str) -> list[Event]:
    parcel = await staff_parcel(session, actor, parcel_id)
    return list(
        (
            await session.exec(
                select(Event)
                .where(
                    Event.property_id == parcel.property_id, Event.subject == f"parcel:{parcel.id}"
                )
                .order_by(col(Event.id))
            )
        ).all()
    )


@dataclass
class Occupancy:
    kiosk_id: str
    size: str
    occupied: int
    total: int
    nearly_full: bool


async def occupancy(session: AsyncSession, property_id: str) -> list[Occupancy]:
    rows = (
        await session.exec(
            select(Compartment.kiosk_id, Compartment.size, Compartment.state, func.count())
            .join(Kiosk, col(Kiosk.id) == Compartment.kiosk_id)
            .where(
                Kiosk.property_id == property_id,
                Compartment.purpose == "parcel",
                Compartment.state != "out_of_service",
            )
            .group_by(col(Compartment.kiosk_id), col(Compartment.size), col(Compartment.state))
        )
    ).all()
    table: dict[tuple[str, str], list[int]] = {}
    for kiosk_id, size, state, count in rows:
        cell = table.setdefault((kiosk_id, size), [0, 0])
        cell[1] += int(count)
        if state != "free":
            cell[0] += int(count)
    result = []
    for (kiosk_id, size), (occupied, total) in sorted(
        table.items(), key=lambda kv: (kv[0][0], SIZE_RANK.get(kv[0][1], 99))
    ):
        nearly = total > 0 and occupied / total >= NEARLY_FULL_RATIO
        result.append(Occupancy(kiosk_id, size, occupied, total, nearly))
    return result


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 1)


async def weekly_report(
    session: AsyncSession, actor: Actor, property_id: str, start: datetime | None, now: datetime
) -> dict[str, Any]:
    """The weekly audit: the seven days up to now, or the week from ``start``."""
    prop = await staff_property(session, actor, property_id)
    rules = policy_of(prop)
    if start is None:
        end = now
        start = now - timedelta(days=7)
    else:
        end = start + timedelta(days=7)

    def between(column: Any) -> Any:
        return (col(column) >= start) & (col(column) < end)

    async def count(*where: Any) -> int:
        value = (
            await session.exec(
                select(func.count())
                .select_from(Parcel)
                .where(Parcel.property_id == property_id, *where)
            )
        ).one()
        return int(value or 0)

    deposits = await count(between(Parcel.deposited_at))
    pickups = list(
        (
            await session.exec(
                select(Parcel).where(
                    Parcel.property_id == property_id,
                    between(Parcel.picked_up_at),
                    col(Parcel.deposited_at).is_not(None),
                )
            )
        ).all()
    )
    minutes = [
        (p.picked_up_at - p.deposited_at).total_seconds() / 60
        for p in pickups
        if p.picked_up_at and p.deposited_at
    ]
    cutoff = end - timedelta(days=rules.reminder_after_days)
    waiting = (
        await session.exec(
            select(Parcel, Unit.label)
            .join(Unit, col(Unit.id) == Parcel.unit_id)
            .where(
                Parcel.property_id == property_id,
                col(Parcel.deposited_at) <= cutoff,
                col(Parcel.deposited_at).is_not(None),
                # still unclaimed at the end of the period
                (col(Parcel.picked_up_at).is_(None)) | (col(Parcel.picked_up_at) >= end),
                (col(Parcel.returned_at).is_(None)) | (col(Parcel.returned_at) >= end),
                col(Parcel.state).in_(("deposited", "overflowed", "picked_up", "returned")),
            )
            .order_by(col(Parcel.deposited_at))
        )
    ).all()
    unclaimed = [
        {
            "parcel_id": p.id,
            "unit": label,
            "days": int((end - p.deposited_at).total_seconds() // 86400) if p.deposited_at else 0,
        }
        for p, label in waiting
    ]
    failed = (
        await session.exec(
            select(func.count())
            .select_from(PinAttempt)
            .where(
                PinAttempt.property_id == property_id,
                col(PinAttempt.outcome) != "granted",
                col(PinAttempt.at) >= start,
                col(PinAttempt.at) < end,
            )
        )
    ).one()
    # Overdue alerts repeat until the key is back: count keys, not alerts.
    keys_overdue = (
        await session.exec(
            select(func.count(func.distinct(Event.subject)))
            .select_from(Event)
            .where(
                Event.property_id == property_id,
                Event.type == "key.overdue",
                col(Event.occurred_at) >= start,
                col(Event.occurred_at) < end,
            )
        )
    ).one()
    return {
        "period": {"start": start, "end": end},
        "deposits": deposits,
        "pickups": len(pickups),
        "unclaimed": unclaimed,
        "occupancy": [
            {"kiosk_id": o.kiosk_id, "size": o.size, "occupied": o.occupied, "total": o.total}
            for o in await occupancy(session, property_id)
        ],
        "pickup_minutes": {"p50": _percentile(minutes, 0.5), "p90": _percentile(minutes, 0.9)},
        "failed_pin_attempts": int(failed or 0),
        "overflow_moves": await count(between(Parcel.overflowed_at)),
        "returns": await count(between(Parcel.returned_at)),
        "keys_overdue": int(keys_overdue or 0),
        "staff_minutes_saved": round(deposits * rules.minutes_per_package, 1),
    }
