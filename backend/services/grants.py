"""Grants: what a caller may open right now, the input of credential issuance.

A grant names one kiosk and one target on it (``door:<id>`` or ``compartment:<id>``), the role
the credential will carry and the end of the window it is valid in. Features produce grants:
doors (standing access, here), parcels (``backend.services.parcels.pickup_grants``) and vendor
visits (``backend.services.work_orders.visit_grants``). Something the caller may not open is
``NotFound``: the caller must not learn whether it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.db import keep_loaded
from backend.models import Door, Kiosk


@dataclass(frozen=True)
class Grant:
    kiosk_id: str
    target: str
    not_after: datetime | None
    role: str
    parcel_id: str | None = None
    work_order_id: str | None = None
    key_id: str | None = None


def door_role(actor: Actor, door: Door) -> str | None:
    """The role under which ``actor`` has standing access to ``door``, or None.

    Staff of the property open every door of it; ``open_to: residents`` adds every resident
    of the property; ``open_to: units`` adds the residents of the listed units. Vendors and
    couriers have no standing access (vendors open doors through their visit).
    """
    if door.property_id in actor.staff_property_ids:
        return "staff"
    residents = [
        r for r in actor.roles if r.role == "resident" and r.property_id == door.property_id
    ]
    if door.open_to == "residents" and residents:
        return "resident"
    if door.open_to == "units" and any(r.unit_id in (door.unit_ids or []) for r in residents):
        return "resident"
    return None


async def door_grants(
    session: AsyncSession, actor: Actor, door_id: str, now: datetime
) -> list[Grant]:
    """One grant for a door the caller has standing access to. The door's kiosk comes in the
    same query and stays loaded: issuance reads it next (audience, public key)."""
    row = (
        await session.exec(
            select(Door, Kiosk)
            .outerjoin(Kiosk, col(Kiosk.id) == Door.kiosk_id)
            .where(Door.id == door_id)
        )
    ).first()
    door = row[0] if row is not None else None
    if row is not None:
        keep_loaded(session, row[1])
    role = door_role(actor, door) if door is not None else None
    if door is None or role is None:
        raise errors.NotFound("Door not found")
    return [Grant(kiosk_id=door.kiosk_id, target=f"door:{door.id}", not_after=None, role=role)]
