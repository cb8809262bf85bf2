"""Properties, units, doors and members: what staff set up and manage."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import Door, Kiosk, Membership, Property, Unit, User
from backend.scoping import staff_property
from backend.services.accounts import revoke_user_sessions
from backend.services.events import record_event


class QuietHours(msgspec.Struct, forbid_unknown_fields=True):
    start: str = "22:00"
    end: str = "07:00"


class PropertyPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-property policy; defaults follow the property managers' articles."""

    reminder_after_days: int = 5
    overflow_after_days: int = 7
    quiet_hours: QuietHours | None = msgspec.field(default_factory=QuietHours)
    pin_max_attempts: int = 5
    pin_lockout_minutes: int = 15
    minutes_per_package: float = 6
    key_grace_minutes: int = 15
    access_grace_minutes: int = 10
    vendor_fail_closed_minutes: int = 60
    door_held_open_seconds: int = 30
    emergency_requires_approval: bool = False


def policy_of(prop: Property) -> PropertyPolicy:
    return msgspec.convert(prop.policy or {}, PropertyPolicy)


def _check_policy(policy: PropertyPolicy) -> None:
    if policy.reminder_after_days < 0 or policy.overflow_after_days < policy.reminder_after_days:
        raise errors.ValidationFailed("overflow_after_days must be >= reminder_after_days >= 0")
    if policy.pin_max_attempts < 1 or policy.pin_lockout_minutes < 1:
        raise errors.ValidationFailed("pin_max_attempts and pin_lockout_minutes must be positive")
    if policy.quiet_hours is not None:
        for value in (policy.quiet_hours.start, policy.quiet_hours.end):
            try:
                datetime.strptime(value, "%H:%M")
            except ValueError:
                raise errors.ValidationFailed("quiet_hours times are HH:MM") from None


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise errors.InvalidTimezone(f"unknown timezone {name!r}") from None
    return name


async def create_property(
    session: AsyncSession, actor: Actor, name: str, timezone: str, policy: dict[str, Any] | None
) -> Property:
    if not actor.is_admin:
        raise errors.Forbidden("only admins create properties")
    merged = msgspec.convert(policy or {}, PropertyPolicy)
    _check_policy(merged)
    prop = Property(
        name=name, timezone=check_timezone(timezone), policy=msgspec.to_builtins(merged)
    )
    session.add(prop)
    await session.flush()
    await record_event(
        session,
        property_id=prop.id,
        type="property.created",
        actor=f"user:{actor.user_id}",
        subject=f"property:{prop.id}",
        payload={"name": name},
        notify=False,
    )
    return prop


async def update_property(
    session: AsyncSession,
    actor: Actor,
    property_id: str,
    *,
    name: str | None,
    timezone: str | None,
    policy: dict[str, Any] | None,
) -> Property:
    prop = await staff_property(session, actor, property_id)
    if name is not None:
        prop.name = name
    if timezone is not None:
        prop.timezone = check_timezone(timezone)
    if policy is not None:
        merged = msgspec.convert({**(prop.policy or {}), **policy}, PropertyPolicy)
        _check_policy(merged)
        prop.policy = msgspec.to_builtins(merged)
    session.add(prop)
    await session.flush()
    await record_event(
        session,
        property_id=prop.id,
        type="property.updated",
        actor=f"user:{actor.user_id}",
        subject=f"property:{prop.id}",
        payload={"name": prop.name, "timezone": prop.timezone, "policy": prop.policy},
        notify=False,
    )
    return prop


async def create_unit(session: AsyncSession, actor: Actor, property_id: str, label: str) -> Unit:
    await staff_property(session, actor, property_id)
    label = label.strip()
    exists = (
        await session.exec(select(Unit).where(Unit.property_id == property_id, Unit.label == label))
    ).first()
    if exists is not None:
        raise errors.AlreadyExists(f"unit {label!r} already exists")
    unit = Unit(property_id=property_id, label=label)
    session.add(unit)
    await session.flush()
    return unit


async def unit_by_label(session: AsyncSession, property_id: str, label: str) -> Unit | None:
    return (
        await session.exec(
            select(Unit).where(Unit.property_id == property_id, Unit.label == label.strip())
        )
    ).first()


async def members(
    session: AsyncSession, actor: Actor, property_id: str
) -> list[tuple[Membership, User]]:
    await staff_property(session, actor, property_id)
    rows = await session.exec(
        select(Membership, User)
        .join(User, col(User.id) == Membership.user_id)
        .where(Membership.property_id == property_id)
        .order_by(col(Membership.user_id))
    )
    return list(rows.all())


async def remove_member(
    session: AsyncSession, actor: Actor, property_id: str, user_id: str, now: datetime
) -> None:
    """Remove every role the user has at the property; their access ends at once.

    Access tokens carry no roles, so the next request already fails scoping; refresh tokens
    are revoked, and the credentials the user holds for this property are revoked
    (``on_member_removed`` hooks, registered by the credentials service).
    """
    await staff_property(session, actor, property_id)
    rows = (
        await session.exec(
            select(Membership).where(
                Membership.property_id == property_id, Membership.user_id == user_id
            )
        )
    ).all()
    if not rows:
        raise errors.NotFound("Member not found")
    await session.exec(  # type: ignore[call-overload]
        delete(Membership).where(
            col(Membership.property_id) == property_id, col(Membership.user_id) == user_id
        )
    )
    remaining = (
        await session.exec(select(Membership).where(Membership.user_id == user_id).limit(1))
    ).first()
    if remaining is None:
        await revoke_user_sessions(session, user_id, now)
    for hook in ON_MEMBER_REMOVED:
        await hook(session, property_id, user_id, now)
    await record_event(
        session,
        property_id=property_id,
        type="member.removed",
        actor=f"user:{actor.user_id}",
        subject=f"user:{user_id}",
        user_id=user_id,
        payload={"user_id": user_id, "roles": [m.role for m in rows]},
        notify=False,
    )


# Async callables (session, property_id, user_id, now) run when a member is removed.
ON_MEMBER_REMOVED: list[Any] = []


async def create_door(
    session: AsyncSession,
    actor: Actor,
    property_id: str,
    *,
    name: str,
    kiosk_id: str,
    open_to: str,
    unit_ids: list[str],
) -> Door:
    await staff_property(session, actor, property_id)
    kiosk = await session.get(Kiosk, kiosk_id)
    if kiosk is None or kiosk.property_id != property_id:
        raise errors.NotFound("Kiosk not found")
    if open_to not in ("residents", "units", "staff"):
        raise errors.ValidationFailed("open_to must be residents, units or staff")
    if open_to == "units":
        if not unit_ids:
            raise errors.ValidationFailed("open_to units needs unit_ids")
        found = (
            await session.exec(
                select(Unit.id).where(col(Unit.id).in_(unit_ids), Unit.property_id == property_id)
            )
        ).all()
        if len(set(found)) != len(set(unit_ids)):
            raise errors.NotFound("Unit not found")
    elif unit_ids:
        raise errors.ValidationFailed("unit_ids only apply when open_to is units")
    door = Door(
        property_id=property_id, kiosk_id=kiosk_id, name=name, open_to=open_to, unit_ids=unit_ids
    )
    session.add(door)
    await session.flush()
    return door
