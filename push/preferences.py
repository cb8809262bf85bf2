"""Per-user push preferences and the property's quiet hours.

Rules: every event type with a push template is on by default; a user may turn any of them off,
except that staff cannot turn off security alerts (``alarm`` templates) while they are staff
somewhere: those reach them regardless of any stored preference. Quiet hours come from the
property policy (``quiet_hours``, in the property's timezone): reminders wait until they end,
alarms never wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import NotificationPreference, Property
from backend.services.properties import policy_of
from push.messages import TEMPLATES, Template

ROLE_AUDIENCES = {"resident": {"unit", "user"}, "vendor": {"user"}, "staff": {"staff", "user"}}


@dataclass(frozen=True)
class PreferenceState:
    event_type: str
    push: bool
    locked: bool
    category: str


def is_locked(template: Template, is_staff: bool) -> bool:
    return is_staff and template.category == "alarm"


def relevant_types(actor: Actor) -> list[str]:
    """Event types that can reach this user given their roles (all of them for admins)."""
    if actor.is_admin:
        return sorted(TEMPLATES)
    audiences: set[str] = set()
    for role in actor.roles:
        audiences |= ROLE_AUDIENCES.get(role.role, set())
    return sorted(t for t, template in TEMPLATES.items() if template.audiences & audiences)


async def stored(session: AsyncSession, user_id: str) -> dict[str, bool]:
    rows = await session.exec(
        select(NotificationPreference).where(NotificationPreference.user_id == user_id)
    )
    return {row.event_type: row.push for row in rows.all()}


async def preference_states(session: AsyncSession, actor: Actor) -> list[PreferenceState]:
    choices = await stored(session, actor.user_id)
    is_staff = bool(actor.staff_property_ids)
    states = []
    for event_type in relevant_types(actor):
        template = TEMPLATES[event_type]
        locked = is_locked(template, is_staff)
        states.append(
            PreferenceState(
                event_type,
                True if locked else choices.get(event_type, True),
                locked,
                template.category,
            )
        )
    return states


async def set_preferences(
    session: AsyncSession, actor: Actor, choices: dict[str, bool], now: datetime
) -> list[PreferenceState]:
    """Store the given choices (others unchanged); turning off a locked alert is refused."""
    is_staff = bool(actor.staff_property_ids)
    for event_type, push in choices.items():
        template = TEMPLATES.get(event_type)
        if template is None:
            raise errors.ValidationFailed(f"no push notifications exist for {event_type!r}")
        if not push and is_locked(template, is_staff):
            raise errors.PreferenceLocked(f"{event_type} is a security alert; staff receive it")
    existing = {
        row.event_type: row
        for row in (
            await session.exec(
                select(NotificationPreference)
                .where(
                    NotificationPreference.user_id == actor.user_id,
                    col(NotificationPreference.event_type).in_(list(choices)),
                )
                .with_for_update()
            )
        ).all()
    }
    for event_type, push in choices.items():
        row = existing.get(event_type) or NotificationPreference(
            user_id=actor.user_id, event_type=event_type
        )
        row.push = push
        row.updated_at = now
        session.add(row)
    await session.flush()
    return await preference_states(session, actor)


async def wants_push(
    session: AsyncSession, user_id: str, event_type: str, template: Template, is_staff: bool
) -> bool:
    if is_locked(template, is_staff):
        return True
    row = (
        await session.exec(
            select(NotificationPreference.push).where(
                NotificationPreference.user_id == user_id,
                NotificationPreference.event_type == event_type,
            )
        )
    ).first()
    return True if row is None else bool(row)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def quiet_hours_end(prop: Property, now: datetime) -> datetime | None:
    """When the property's quiet hours end, if ``now`` falls inside them; else None."""
    quiet = policy_of(prop).quiet_hours
    if quiet is None:
        return None
    zone = _zone(prop.timezone)
    local = now.astimezone(zone)
    start = time.fromisoformat(quiet.start)
    end = time.fromisoformat(quiet.end)
    if start == end:
        return None
    clock = local.time().replace(tzinfo=None)
    if start < end:
        inside = start <= clock < end
        end_day = local.date()
    else:  # spans midnight, e.g. 22:00-07:00
        inside = clock >= start or clock < end
        end_day = local.date() + timedelta(days=1) if clock >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=zone).astimezone(now.tzinfo)
