"""Response views of parcels, shared by the phone, staff and kiosk APIs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

import msgspec
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import Compartment, DeliveryHold, Event, Parcel, Unit
from backend.services import parcels

State = Annotated[
    str,
    msgspec.Meta(
        description="announced, assigned, deposited, picked_up, overflowed, returned or cancelled"
    ),
]


class CompartmentRef(msgspec.Struct):
    id: str
    label: str


class ParcelView(msgspec.Struct):
    id: str
    property_id: str
    kiosk_id: str | None
    unit_id: str
    unit: str
    compartment: CompartmentRef | None
    carrier: str
    tracking: str
    size: str
    state: State
    location: str | None
    offline: bool
    pickup_pin: Annotated[
        str | None, msgspec.Meta(description="6 digits, with the unit, at the kiosk; while waiting")
    ]
    created_at: datetime
    deposited_at: datetime | None
    reminded_at: datetime | None
    overflow_due_at: datetime | None
    overflowed_at: datetime | None
    picked_up_at: datetime | None
    returned_at: datetime | None
    cancelled_at: datetime | None


class DeliveryView(msgspec.Struct):
    """What the kiosk needs at intake: which door to open."""

    parcel_id: str
    compartment: CompartmentRef | None
    state: State
    unit: str
    size: str
    carrier: str
    tracking: str
    location: str | None


class CustodyEventView(msgspec.Struct):
    id: str
    type: str
    occurred_at: datetime
    actor: str
    data: dict[str, object]


class HoldView(msgspec.Struct):
    unit_id: str
    until: datetime


class OccupancyView(msgspec.Struct):
    kiosk_id: str
    size: str
    occupied: int
    total: int
    free: int
    nearly_full: bool


class OccupancyReportView(msgspec.Struct):
    items: list[OccupancyView]
    warnings: list[str]


class PinDecisionView(msgspec.Struct):
    granted: bool
    reason: Annotated[str, msgspec.Meta(description="pin_ok, wrong_pin or locked_out")]
    compartments: list[dict[str, str]]
    retry_after_seconds: int | None


async def parcel_views(
    session: AsyncSession, rows: Sequence[Parcel], *, show_pin: bool
) -> list[ParcelView]:
    unit_ids = {p.unit_id for p in rows}
    compartment_ids = {p.compartment_id for p in rows if p.compartment_id}
    units = {
        u.id: u.label
        for u in (await session.exec(select(Unit).where(col(Unit.id).in_(unit_ids)))).all()
    }
    compartments = {
        c.id: c.label
        for c in (
            await session.exec(select(Compartment).where(col(Compartment.id).in_(compartment_ids)))
        ).all()
    }
    views = []
    for p in rows:
        compartment = (
            CompartmentRef(p.compartment_id, compartments.get(p.compartment_id, ""))
            if p.compartment_id
            else None
        )
        views.append(
            ParcelView(
                id=p.id,
                property_id=p.property_id,
                kiosk_id=p.kiosk_id,
                unit_id=p.unit_id,
                unit=units.get(p.unit_id, ""),
                compartment=compartment,
                carrier=p.carrier,
                tracking=p.tracking,
                size=p.size,
                state=p.state,
                location=p.location,
                offline=p.offline,
                pickup_pin=parcels.pickup_pin(session, p) if show_pin else None,
                created_at=p.created_at,
                deposited_at=p.deposited_at,
                reminded_at=p.reminded_at,
                overflow_due_at=p.overflow_due_at,
                overflowed_at=p.overflowed_at,
                picked_up_at=p.picked_up_at,
                returned_at=p.returned_at,
                cancelled_at=p.cancelled_at,
            )
        )
    return views


async def parcel_view(session: AsyncSession, parcel: Parcel, *, show_pin: bool) -> ParcelView:
    return (await parcel_views(session, [parcel], show_pin=show_pin))[0]


async def delivery_view(
    session: AsyncSession, parcel: Parcel, compartment: Compartment | None
) -> DeliveryView:
    unit = await session.get(Unit, parcel.unit_id)
    return DeliveryView(
        parcel_id=parcel.id,
        compartment=CompartmentRef(compartment.id, compartment.label) if compartment else None,
        state=parcel.state,
        unit=unit.label if unit else "",
        size=parcel.size,
        carrier=parcel.carrier,
        tracking=parcel.tracking,
        location=parcel.location,
    )


def custody_views(events: Sequence[Event]) -> list[CustodyEventView]:
    return [
        CustodyEventView(str(e.id), e.type, e.occurred_at, e.actor, dict(e.payload)) for e in events
    ]


def hold_views(holds: Sequence[DeliveryHold]) -> list[HoldView]:
    return [HoldView(h.unit_id, h.until) for h in holds]
