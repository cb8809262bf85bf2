"""Parcel entries of a kiosk's journal: deposits made while offline and PIN pickups decided
offline, reconciled with what the server decided meanwhile.

Registered with ``backend.services.journal`` at import (``backend.app`` imports this module),
together with the hook that marks a parcel picked up when its credential is redeemed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import (
    Compartment,
    Kiosk,
    Parcel,
    Property,
)
from backend.models.parcel import ACTIVE_STATES
from backend.services.events import record_event
from backend.services.parcel_pins import pin_failed, record_pin_attempt
from backend.services.parcels import (
    SIZE_RANK,
    WAITING_STATES,
    confirm_deposit,
    existing_parcel,
    find_unit,
    is_postgres,
    mark_all_picked_up,
    mark_deposited,
    normal_label,
    on_credential_redeemed,
    release_compartment,
)


def _entry_data(entry: Any) -> dict[str, Any]:
    data = getattr(entry, "data", None)
    return data if isinstance(data, dict) else {}


def _parse_time(value: Any, default: datetime) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return default
        if parsed.tzinfo is not None:
            return parsed
    return default


async def _conflict(
    session: AsyncSession, kiosk: Kiosk, reason: str, at: datetime, **payload: Any
) -> None:
    await record_event(
        session,
        property_id=kiosk.property_id,
        type="parcel.conflict",
        actor=f"kiosk:{kiosk.id}",
        subject=f"parcel:{payload['parcel_id']}"
        if payload.get("parcel_id")
        else f"kiosk:{kiosk.id}",
        payload={"kiosk_id": kiosk.id, "reason": reason, **payload},
        occurred_at=at,
        notify=True,
    )


async def _ingest_offline_deposit(
    session: AsyncSession, kiosk: Kiosk, entry: Any, now: datetime
) -> None:
    """``parcel.deposited_offline``: the kiosk assigned from its synced free list while offline.

    data: {carrier, tracking, unit, size, compartment_id, closed_at?}. Reconciled here; when
    the server gave that compartment to another parcel meanwhile (or the unit or compartment
    is unknown) the parcel is recorded without a compartment and staff get ``parcel.conflict``.
    """
    data = _entry_data(entry)
    occurred = min(_parse_time(getattr(entry, "occurred_at", None), now), now)
    at = min(_parse_time(data.get("closed_at"), occurred), now)
    carrier = str(data.get("carrier") or "").strip()[:64] or "unknown"
    tracking = str(data.get("tracking") or "").strip()
    size = str(data.get("size") or "")
    unit_label = str(data.get("unit") or "")
    compartment_id = str(data.get("compartment_id") or "")
    base = {"tracking": tracking, "unit": unit_label, "compartment_id": compartment_id}
    if not tracking or len(tracking) > 64 or size not in SIZE_RANK:
        await _conflict(session, kiosk, "invalid_entry", at, **base)
        return
    unit = await find_unit(session, kiosk.property_id, unit_label) if unit_label else None
    if unit is None:
        await _conflict(session, kiosk, "unknown_unit", at, **base)
        return
    statement = select(Compartment).where(Compartment.id == compartment_id)
    if is_postgres(session):
        statement = statement.with_for_update()
    compartment = (await session.exec(statement)).first() if compartment_id else None
    if compartment is None or compartment.kiosk_id != kiosk.id:
        await _conflict(session, kiosk, "foreign_compartment", at, **base)
        return
    existing = await existing_parcel(session, kiosk.id, tracking)
    if existing is not None and existing.state != "cancelled":
        if existing.state != "assigned":
            return  # already known: a re-uploaded or duplicate entry
        if existing.compartment_id == compartment.id:
            await confirm_deposit(session, kiosk, existing, at, now)
            return
        # Reserved online in one compartment, then deposited offline in another: the parcel is
        # where the kiosk says; the first reservation is released.
        await release_compartment(session, existing.compartment_id)
        existing.compartment_id = None
        session.add(existing)
        await session.flush()
    holder = (
        await session.exec(
            select(Parcel).where(
                Parcel.compartment_id == compartment.id, col(Parcel.state).in_(ACTIVE_STATES)
            )
        )
    ).first()
    parcel = existing or Parcel(
        property_id=kiosk.property_id,
        kiosk_id=kiosk.id,
        unit_id=unit.id,
        carrier=carrier,
        tracking=tracking,
        size=size,
        created_by=f"kiosk:{kiosk.id}",
        created_at=at,
    )
    parcel.unit_id, parcel.carrier, parcel.size, parcel.offline = unit.id, carrier, size, True
    parcel.cancelled_at = None
    if (
        holder is not None
        or compartment.purpose != "parcel"
        or compartment.state == "out_of_service"
    ):
        parcel.state = "announced"
        parcel.compartment_id = None
        parcel.location = f"compartment {compartment.label} (conflict)"
        session.add(parcel)
        await session.flush()
        await _conflict(
            session,
            kiosk,
            "compartment_taken",
            at,
            parcel_id=parcel.id,
            other_parcel_id=holder.id if holder else None,
            unit_id=unit.id,
            **base,
        )
        return
    parcel.compartment_id = compartment.id
    parcel.assigned_at = at
    await mark_deposited(session, kiosk, parcel, compartment, at, offline=True)


async def _ingest_pin_pickup(
    session: AsyncSession, kiosk: Kiosk, entry: Any, now: datetime
) -> None:
    """``pin.pickup``: a PIN checked offline. data: {unit, granted, reason, parcel_ids}."""
    data = _entry_data(entry)
    at = min(_parse_time(getattr(entry, "occurred_at", None), now), now)
    label = normal_label(str(data.get("unit") or ""))[:32]
    unit = await find_unit(session, kiosk.property_id, label) if label else None
    prop = await session.get(Property, kiosk.property_id)
    assert prop is not None
    if not data.get("granted"):
        reason = "locked_out" if data.get("reason") == "locked_out" else "wrong_pin"
        await pin_failed(session, kiosk, prop, unit, label, reason, "offline", at)
        return
    await record_pin_attempt(session, kiosk, unit, label, "granted", "offline", at)
    picked: list[Parcel] = []
    ids = list(dict.fromkeys(str(i) for i in (data.get("parcel_ids") or [])[:20]))
    for parcel_id in ids:
        statement = select(Parcel).where(Parcel.id == parcel_id)
        if is_postgres(session):
            statement = statement.with_for_update()
        parcel = (await session.exec(statement)).first()
        if (
            parcel is None
            or parcel.kiosk_id != kiosk.id
            or unit is None
            or parcel.unit_id != unit.id
            or parcel.state not in WAITING_STATES
        ):
            continue
        picked.append(parcel)
    await mark_all_picked_up(session, picked, f"kiosk:{kiosk.id}", at, channel="pin_offline")


def _register() -> None:
    try:
        from backend.services import journal
    except ImportError:  # the credentials feature is not installed
        return
    journal.JOURNAL_HANDLERS["parcel.deposited_offline"] = _ingest_offline_deposit
    journal.JOURNAL_HANDLERS["pin.pickup"] = _ingest_pin_pickup
    if on_credential_redeemed not in journal.REDEMPTION_HOOKS:
        journal.REDEMPTION_HOOKS.append(on_credential_redeemed)


_register()
