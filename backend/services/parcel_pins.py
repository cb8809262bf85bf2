"""The pickup PIN typed at the kiosk: the online decision, failure budgets, and the hashes a
kiosk syncs to check PINs offline.

Failures are budgeted per (kiosk, unit) and per kiosk; past a budget every attempt answers
``locked_out`` until the window passes, and a burst raises ``pin.burst`` for staff. The PIN
itself is never stored (see ``parcels``: HMAC of a nonce; kiosks get a slow scrypt hash).
"""

from __future__ import annotations

import asyncio
import hmac
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import (
    Compartment,
    Kiosk,
    Parcel,
    PinAttempt,
    Property,
    Unit,
)
from backend.services.events import record_event
from backend.services.parcels import (
    KIOSK_BUDGET_FACTOR,
    PIN_DIGITS,
    WAITING_STATES,
    check_pin_hash,
    derive_pin_hashes,
    find_unit,
    is_postgres,
    mark_all_picked_up,
    normal_label,
    pin_from_nonce,
    pin_key,
)
from backend.services.properties import policy_of


@dataclass
class PinDecision:
    granted: bool
    reason: str
    compartments: list[dict[str, str]] = field(default_factory=list)
    retry_after_seconds: int | None = None


async def _failures(
    session: AsyncSession, kiosk_id: str, since: datetime, unit_label: str | None
) -> tuple[int, datetime | None]:
    statement = select(func.count(), func.min(PinAttempt.at)).where(
        PinAttempt.kiosk_id == kiosk_id,
        PinAttempt.outcome == "wrong_pin",
        col(PinAttempt.at) >= since,
    )
    if unit_label is not None:
        statement = statement.where(PinAttempt.unit_label == unit_label)
    count, oldest = (await session.exec(statement)).one()
    return int(count or 0), oldest


async def record_pin_attempt(
    session: AsyncSession,
    kiosk: Kiosk,
    unit: Unit | None,
    unit_label: str,
    outcome: str,
    channel: str,
    at: datetime,
) -> None:
    session.add(
        PinAttempt(
            property_id=kiosk.property_id,
            kiosk_id=kiosk.id,
            unit_id=unit.id if unit else None,
            unit_label=unit_label,
            outcome=outcome,
            channel=channel,
            at=at,
        )
    )
    await session.flush()


async def pin_failed(
    session: AsyncSession,
    kiosk: Kiosk,
    prop: Property,
    unit: Unit | None,
    unit_label: str,
    reason: str,
    channel: str,
    at: datetime,
) -> None:
    """Journal a failure; alert staff when the kiosk's failures reach its budget (a burst)."""
    rules = policy_of(prop)
    since = at - timedelta(minutes=rules.pin_lockout_minutes)
    await record_pin_attempt(session, kiosk, unit, unit_label, reason, channel, at)
    unit_failures, _ = await _failures(session, kiosk.id, since, unit_label)
    kiosk_failures, _ = await _failures(session, kiosk.id, since, None)
    payload = {
        "kiosk_id": kiosk.id,
        "unit": unit_label,
        "unit_id": unit.id if unit else None,
        "reason": reason,
        "channel": channel,
        "failures": unit_failures,
    }
    await record_event(
        session,
        property_id=kiosk.property_id,
        type="pin.failed",
        actor=f"kiosk:{kiosk.id}",
        subject=f"kiosk:{kiosk.id}",
        payload=payload,
        occurred_at=at,
        notify=False,
    )
    if reason == "wrong_pin" and unit_failures == rules.pin_max_attempts:
        await record_event(
            session,
            property_id=kiosk.property_id,
            type="pin.locked_out",
            actor=f"kiosk:{kiosk.id}",
            subject=f"kiosk:{kiosk.id}",
            payload={**payload, "minutes": rules.pin_lockout_minutes},
            occurred_at=at,
            severity="warning",
            notify=False,
        )
    if reason == "wrong_pin" and kiosk_failures == rules.pin_max_attempts * KIOSK_BUDGET_FACTOR:
        await record_event(
            session,
            property_id=kiosk.property_id,
            type="pin.burst",
            actor=f"kiosk:{kiosk.id}",
            subject=f"kiosk:{kiosk.id}",
            payload={
                "kiosk_id": kiosk.id,
                "failures": kiosk_failures,
                "minutes": rules.pin_lockout_minutes,
            },
            occurred_at=at,
            notify=True,
        )


async def pin_pickup(
    session: AsyncSession, kiosk: Kiosk, unit_label: str, pin: str, now: datetime
) -> PinDecision:
    """A unit and PIN typed at the kiosk: opens every compartment of that unit's parcels there.

    Failures are budgeted per (kiosk, unit) and per kiosk over ``pin_lockout_minutes``; past
    the budget the answer is ``locked_out`` even for the right PIN until old failures age out.
    """
    prop = await session.get(Property, kiosk.property_id)
    assert prop is not None
    if is_postgres(session):  # one PIN check at a time per kiosk: budgets are exact
        await session.exec(select(Kiosk.id).where(Kiosk.id == kiosk.id).with_for_update())
    rules = policy_of(prop)
    label = normal_label(unit_label)
    unit = await find_unit(session, kiosk.property_id, label)
    since = now - timedelta(minutes=rules.pin_lockout_minutes)
    unit_failures, unit_oldest = await _failures(session, kiosk.id, since, label)
    kiosk_failures, kiosk_oldest = await _failures(session, kiosk.id, since, None)
    locked = None
    if unit_failures >= rules.pin_max_attempts:
        locked = unit_oldest
    elif kiosk_failures >= rules.pin_max_attempts * KIOSK_BUDGET_FACTOR:
        locked = kiosk_oldest
    if locked is not None:
        await pin_failed(session, kiosk, prop, unit, label, "locked_out", "online", now)
        ends = locked + timedelta(minutes=rules.pin_lockout_minutes)
        return PinDecision(False, "locked_out", [], max(1, math.ceil((ends - now).total_seconds())))
    candidates: list[Parcel] = []
    if unit is not None and pin.isdigit() and len(pin) == PIN_DIGITS:
        statement = select(Parcel).where(
            Parcel.kiosk_id == kiosk.id,
            Parcel.unit_id == unit.id,
            col(Parcel.state).in_(WAITING_STATES),
            col(Parcel.pin_nonce).is_not(None),
        )
        if is_postgres(session):
            statement = statement.with_for_update()
        rows = (await session.exec(statement)).all()
        key = pin_key(session)
        for parcel in rows:
            if key is not None and parcel.pin_nonce is not None:
                ok = hmac.compare_digest(pin_from_nonce(key, parcel.pin_nonce), pin)
            elif parcel.pin_hash is not None:
                ok = await asyncio.to_thread(check_pin_hash, parcel.pin_hash, pin)
            else:
                ok = False
            if ok:
                candidates.append(parcel)
    if not candidates:
        await pin_failed(session, kiosk, prop, unit, label, "wrong_pin", "online", now)
        return PinDecision(False, "wrong_pin")
    await record_pin_attempt(session, kiosk, unit, label, "granted", "online", now)
    opened = []
    for parcel in candidates:
        compartment = await session.get(Compartment, parcel.compartment_id or "")
        opened.append(
            {
                "id": parcel.compartment_id or "",
                "label": compartment.label if compartment else "",
                "parcel_id": parcel.id,
            }
        )
    await mark_all_picked_up(session, candidates, f"kiosk:{kiosk.id}", now, channel="pin")
    return PinDecision(True, "pin_ok", opened)


async def pin_hashes_for_kiosk(
    session: AsyncSession, kiosk: Kiosk, now: datetime
) -> list[dict[str, Any]]:
    """Sync ``pin_hashes``: what the kiosk needs to check a unit + PIN offline."""
    await derive_pin_hashes(session, kiosk.id)
    rows = (
        await session.exec(
            select(Parcel, Unit.label, Compartment.label)
            .join(Unit, col(Unit.id) == Parcel.unit_id)
            .join(Compartment, col(Compartment.id) == Parcel.compartment_id)
            .where(
                Parcel.kiosk_id == kiosk.id,
                col(Parcel.state).in_(WAITING_STATES),
                col(Parcel.pin_hash).is_not(None),
            )
            .order_by(col(Parcel.id))
        )
    ).all()
    entries = []
    for parcel, unit_label, compartment_label in rows:
        alg, n, r, p, salt, digest = (parcel.pin_hash or "").split("$")
        entries.append(
            {
                "parcel_id": parcel.id,
                "unit": unit_label,
                "unit_id": parcel.unit_id,
                "compartment_id": parcel.compartment_id,
                "compartment_label": compartment_label,
                "alg": alg,
                "n": int(n),
                "r": int(r),
                "p": int(p),
                "salt": salt,
                "hash": digest,
                "pin_hash": parcel.pin_hash,
            }
        )
    return entries
