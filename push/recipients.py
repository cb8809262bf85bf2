"""Who gets a push for an event: the same rule as realtime (contracts, "Who sees an event").

Residents of the event's unit, the single user it concerns (``user_id``: the vendor of a work
order, the holder of a credential), and the property's staff, each only as far as the event
type's template names that audience. Every membership is looked up at the event's own
property: a user of another tenant is never a recipient, even if an event names them.
Then every active device of those users with an enabled push token.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, or_
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import Device, Event, Membership, User
from push.messages import Template


@dataclass(frozen=True)
class Recipient:
    user_id: str
    is_staff: bool  # staff of the event's property: security alerts cannot be muted


async def recipients(session: AsyncSession, event: Event, template: Template) -> list[Recipient]:
    conditions: list[ColumnElement[bool]] = []
    if "unit" in template.audiences and event.unit_id:
        conditions.append(
            (col(Membership.role) == "resident") & (col(Membership.unit_id) == event.unit_id)
        )
    if "user" in template.audiences and event.user_id:
        conditions.append(col(Membership.user_id) == event.user_id)
    if "staff" in template.audiences:
        conditions.append(col(Membership.role) == "staff")
    if not conditions:
        return []
    staff = aliased(Membership)
    is_staff = (
        exists()
        .where(
            col(staff.user_id) == col(Membership.user_id),
            col(staff.property_id) == event.property_id,
            col(staff.role) == "staff",
        )
        .correlate(Membership)
    )
    rows = (
        await session.exec(
            select(Membership.user_id, is_staff)
            .join(User, col(User.id) == col(Membership.user_id))
            .where(
                col(Membership.property_id) == event.property_id,
                col(User.is_active).is_(True),
                or_(*conditions),
            )
        )
    ).all()
    staff_ids = {user_id for user_id, staff_member in rows if staff_member}
    return [Recipient(user_id, user_id in staff_ids) for user_id in sorted({u for u, _ in rows})]


async def push_devices(session: AsyncSession, user_ids: list[str]) -> list[Device]:
    """Active devices (not removed) whose push token is set and not disabled."""
    if not user_ids:
        return []
    rows = await session.exec(
        select(Device)
        .where(
            col(Device.user_id).in_(user_ids),
            col(Device.revoked_at).is_(None),
            col(Device.push_token).is_not(None),
            col(Device.push_token_disabled_at).is_(None),
        )
        .order_by(col(Device.id))
    )
    return list(rows.all())
