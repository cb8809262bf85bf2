"""Vendor visits: scheduling, access windows, credentials grants, cancel and shorten.

Windows are computed, never stored expanded: a weekly rule ("every Tuesday 09:00-12:00") is
expanded in the property's timezone with ``zoneinfo`` so each occurrence keeps its local wall
time across daylight-saving changes (09:00 is 14:00 UTC in winter and 13:00 UTC in summer in
New York). A local time that does not exist on a spring-forward day maps to the instant after
the gap; an ambiguous one (fall back) to its first occurrence.

Access rule: a vendor may obtain credentials from ``access_grace_minutes`` before a window
starts until it ends; a credential never outlasts the window (``not_after`` = the window's end,
or the shortened end). Outside, ``OutsideAccessWindow`` names the next window's start.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import Compartment, Door, Event, KeyItem, Membership, Property, Unit, WorkOrder
from backend.scoping import get_in_property, staff_property
from backend.services.events import record_event
from backend.services.properties import policy_of

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_RECURRENCE_DAYS = 2 * 366
OPEN_STATES = ("scheduled", "active")
REMINDER_LEAD = timedelta(minutes=30)  # the vendor's "your visit starts soon"


@dataclass(frozen=True)
class Window:
    starts_at: datetime
    ends_at: datetime


@dataclass(frozen=True)
class Recurrence:
    weekdays: tuple[str, ...]
    start_time: str
    end_time: str
    until: date
    starts_on: date | None = None


def _parse_time(value: str) -> time:
    try:
        return datetime.strptime(value, "%H:%M").time()
    except ValueError:
        raise errors.ValidationFailed("times are HH:MM (24 h)") from None


def _tz(prop: Property) -> ZoneInfo:
    return ZoneInfo(prop.timezone)


def _weekly_windows(rule: dict[str, Any], tz: ZoneInfo, after: datetime | None) -> Iterator[Window]:
    start_t = _parse_time(rule["start_time"])
    end_t = _parse_time(rule["end_time"])
    weekdays = {WEEKDAYS.index(d) for d in rule["weekdays"]}
    day = date.fromisoformat(rule["starts_on"])
    until = date.fromisoformat(rule["until"])
    if after is not None:
        # Start one day early: a window that crosses midnight may still be running.
        day = max(day, after.astimezone(tz).date() - timedelta(days=1))
    while day <= until:
        if day.weekday() in weekdays:
            start = datetime.combine(day, start_t, tzinfo=tz)
            end_day = day if end_t > start_t else day + timedelta(days=1)
            end = datetime.combine(end_day, end_t, tzinfo=tz)
            yield Window(start.astimezone(UTC), end.astimezone(UTC))
        day += timedelta(days=1)


def windows(wo: WorkOrder, tz: ZoneInfo, *, after: datetime | None = None) -> Iterator[Window]:
    """The visit's windows in order, clipped by a shortened end; only those ending after ``after``."""
    raw: Iterator[Window]
    if wo.kind == "weekly":
        raw = _weekly_windows(wo.recurrence, tz, after)
    else:
        raw = iter([Window(wo.starts_at, wo.ends_at)])
    for window in raw:
        start, end = window.starts_at, window.ends_at
        if wo.ends_early_at is not None:
            if start >= wo.ends_early_at:
                return
            end = min(end, wo.ends_early_at)
        if after is not None and end <= after:
            continue
        yield Window(start, end)


def current_window(wo: WorkOrder, tz: ZoneInfo, now: datetime, grace: timedelta) -> Window | None:
    """The window open right now (its start moved ``grace`` earlier), if any."""
    if wo.state not in OPEN_STATES:
        return None
    for window in windows(wo, tz, after=now):
        if window.starts_at - grace <= now:
            return window
        return None
    return None


def next_window(wo: WorkOrder, tz: ZoneInfo, now: datetime) -> Window | None:
    if wo.state not in OPEN_STATES:
        return None
    for window in windows(wo, tz, after=now):
        if window.starts_at > now:
            return window
    return None


# ---------------------------------------------------------------------------------------- create


async def _vendor_membership(
    session: AsyncSession, property_id: str, user_id: str
) -> Membership | None:
    return (
        await session.exec(
            select(Membership).where(
                Membership.property_id == property_id,
                Membership.user_id == user_id,
                Membership.role == "vendor",
            )
        )
    ).first()


async def _check_doors(session: AsyncSession, property_id: str, door_ids: list[str]) -> None:
    if not door_ids:
        return
    found = (
        await session.exec(
            select(Door.id).where(col(Door.id).in_(door_ids), Door.property_id == property_id)
        )
    ).all()
    if len(set(found)) != len(door_ids):
        raise errors.NotFound("Door not found")


async def _check_keys(session: AsyncSession, property_id: str, key_ids: list[str]) -> None:
    if not key_ids:
        return
    found = (
        await session.exec(
            select(KeyItem).where(col(KeyItem.id).in_(key_ids), KeyItem.property_id == property_id)
        )
    ).all()
    if len({k.id for k in found}) != len(key_ids):
        raise errors.NotFound("Key not found")
    for key in found:
        if key.state == "lost":
            raise errors.KeyUnavailable(f"key {key.label!r} is lost")


def _dedupe(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _rule_dict(rule: Recurrence, today: date) -> dict[str, Any]:
    if not rule.weekdays:
        raise errors.RecurrenceNeverOccurs("a weekly rule needs at least one weekday")
    for day in rule.weekdays:
        if day not in WEEKDAYS:
            raise errors.ValidationFailed(f"weekdays are {', '.join(WEEKDAYS)}")
    start_t = _parse_time(rule.start_time)
    end_t = _parse_time(rule.end_time)
    if start_t == end_t:
        raise errors.InvalidWindow("end_time must differ from start_time")
    starts_on = rule.starts_on or today
    if rule.until < starts_on:
        raise errors.RecurrenceNeverOccurs("until is before the rule starts")
    if (rule.until - starts_on).days > MAX_RECURRENCE_DAYS:
        raise errors.ValidationFailed("a weekly rule may span at most two years")
    return {
        "weekdays": sorted(set(rule.weekdays), key=WEEKDAYS.index),
        "start_time": start_t.strftime("%H:%M"),
        "end_time": end_t.strftime("%H:%M"),
        "starts_on": starts_on.isoformat(),
        "until": rule.until.isoformat(),
    }


async def create_work_order(
    session: AsyncSession,
    actor: Actor,
    property_id: str,
    *,
    unit_id: str | None,
    vendor_user_id: str,
    description: str,
    starts_at: datetime | None,
    ends_at: datetime | None,
    recurrence: Recurrence | None,
    door_ids: list[str],
    key_ids: list[str],
    now: datetime,
) -> WorkOrder:
    """Validate everything first (nothing is written on a bad request), then schedule and tell."""
    prop = await staff_property(session, actor, property_id)
    tz = _tz(prop)
    if unit_id is not None:
        unit = await session.get(Unit, unit_id)
        if unit is None or unit.property_id != property_id:
            raise errors.NotFound("Unit not found")
    vendor = await _vendor_membership(session, property_id, vendor_user_id)
    if vendor is None:
        raise errors.NotFound("Vendor not found (a vendor member of this property)")
    door_ids, key_ids = _dedupe(door_ids), _dedupe(key_ids)
    await _check_doors(session, property_id, door_ids)
    await _check_keys(session, property_id, key_ids)

    wo = WorkOrder(
        property_id=property_id,
        unit_id=unit_id,
        vendor_user_id=vendor_user_id,
        company=vendor.company,
        description=description,
        door_ids=door_ids,
        key_ids=key_ids,
        created_by=actor.user_id,
        starts_at=now,
        ends_at=now,
    )
    if recurrence is None:
        if starts_at is None or ends_at is None:
            raise errors.ValidationFailed("give starts_at and ends_at, or a weekly recurrence")
        if ends_at <= starts_at:
            raise errors.InvalidWindow("ends_at must be after starts_at")
        if ends_at <= now:
            raise errors.WindowInPast("the window has already ended")
        wo.kind, wo.starts_at, wo.ends_at = "once", starts_at, ends_at
    else:
        if starts_at is not None or ends_at is not None:
            raise errors.ValidationFailed("give either starts_at/ends_at or a recurrence")
        wo.kind = "weekly"
        wo.recurrence = _rule_dict(recurrence, now.astimezone(tz).date())
        upcoming = list(windows(wo, tz, after=now))
        if not upcoming:
            raise errors.RecurrenceNeverOccurs("the weekly rule has no window after now")
        wo.starts_at, wo.ends_at = upcoming[0].starts_at, upcoming[-1].ends_at
    session.add(wo)
    await session.flush()
    await _tell(session, wo, "work_order.scheduled", f"user:{actor.user_id}", now)
    return wo


async def _tell(
    session: AsyncSession,
    wo: WorkOrder,
    type_: str,
    actor: str,
    now: datetime,
    **extra: Any,
) -> None:
    """An event the unit's residents (unit_id) and the vendor (user_id) both see."""
    payload: dict[str, Any] = {
        "work_order_id": wo.id,
        "unit_id": wo.unit_id,
        "vendor_user_id": wo.vendor_user_id,
        "company": wo.company,
        "starts_at": wo.starts_at.isoformat(),
        "ends_at": (
            min(wo.ends_at, wo.ends_early_at) if wo.ends_early_at else wo.ends_at
        ).isoformat(),
    }
    payload.update(extra)
    await record_event(
        session,
        property_id=wo.property_id,
        type=type_,
        actor=actor,
        subject=f"work_order:{wo.id}",
        payload=payload,
        unit_id=wo.unit_id,
        user_id=wo.vendor_user_id,
        occurred_at=now,
    )


# ----------------------------------------------------------------------------------------- reads


async def staff_work_order(session: AsyncSession, actor: Actor, work_order_id: str) -> WorkOrder:
    return await get_in_property(session, actor, WorkOrder, work_order_id, label="Work order")


async def locked_work_order(session: AsyncSession, work_order_id: str) -> WorkOrder | None:
    """The visit row locked for this transaction and re-read: state changes (cancel, shorten,
    started, ended) are read-then-write, and two kiosks may report at the same moment."""
    return (
        await session.exec(
            select(WorkOrder)
            .where(WorkOrder.id == work_order_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()


async def _staff_locked(session: AsyncSession, actor: Actor, work_order_id: str) -> WorkOrder:
    await staff_work_order(session, actor, work_order_id)
    wo = await locked_work_order(session, work_order_id)
    assert wo is not None
    return wo


async def app_work_order(session: AsyncSession, actor: Actor, work_order_id: str) -> WorkOrder:
    """A visit the phone-app caller may see: theirs as the vendor, or one to their unit."""
    wo = await session.get(WorkOrder, work_order_id)
    if wo is None or not _app_can_see(actor, wo):
        raise errors.NotFound("Work order not found")
    return wo


def _app_can_see(actor: Actor, wo: WorkOrder) -> bool:
    if wo.vendor_user_id == actor.user_id and wo.property_id in actor.properties_as("vendor"):
        return True
    return wo.unit_id is not None and wo.unit_id in actor.unit_ids


def app_filter(actor: Actor) -> Any:
    from sqlalchemy import and_, false, or_

    clauses = []
    vendor_props = actor.properties_as("vendor")
    if vendor_props:
        clauses.append(
            and_(
                col(WorkOrder.vendor_user_id) == actor.user_id,
                col(WorkOrder.property_id).in_(vendor_props),
            )
        )
    if actor.unit_ids:
        clauses.append(col(WorkOrder.unit_id).in_(actor.unit_ids))
    return or_(*clauses) if clauses else false()


async def window_info(
    session: AsyncSession, wo: WorkOrder, now: datetime
) -> tuple[Window | None, Window | None]:
    """(window open now, next window) for views."""
    prop = await session.get(Property, wo.property_id)
    assert prop is not None
    tz = _tz(prop)
    grace = timedelta(minutes=policy_of(prop).access_grace_minutes)
    current = current_window(wo, tz, now, grace)
    upcoming = next_window(wo, tz, now)
    return current, upcoming


# ---------------------------------------------------------------------------------------- grants


async def visit_grants(
    session: AsyncSession, actor: Actor, work_order_id: str, target: str | None, now: datetime
) -> list[Any]:
    """What the vendor's app may open right now for this visit (contract with credentials).

    One grant per door of the visit and one for each key compartment holding a key placed for
    this visit. Another vendor's visit is ``NotFound``; outside the window (or a cancelled
    visit) ``OutsideAccessWindow`` with ``next_window_starts_at`` (null when none is left).
    """
    from backend.services.grants import Grant

    wo = await session.get(WorkOrder, work_order_id)
    if (
        wo is None
        or wo.vendor_user_id != actor.user_id
        or wo.property_id not in actor.properties_as("vendor")
    ):
        raise errors.NotFound("Work order not found")
    prop = await session.get(Property, wo.property_id)
    assert prop is not None
    tz = _tz(prop)
    grace = timedelta(minutes=policy_of(prop).access_grace_minutes)
    window = current_window(wo, tz, now, grace)
    if window is None:
        upcoming = next_window(wo, tz, now)
        raise errors.OutsideAccessWindow(
            "this visit gives no access now",
            next_window_starts_at=upcoming.starts_at.isoformat() if upcoming else None,
        )
    grants: list[Any] = []
    if wo.door_ids:
        doors = (await session.exec(select(Door).where(col(Door.id).in_(wo.door_ids)))).all()
        for door in sorted(doors, key=lambda d: wo.door_ids.index(d.id)):
            if door.property_id != wo.property_id:
                continue
            grants.append(
                Grant(
                    kiosk_id=door.kiosk_id,
                    target=f"door:{door.id}",
                    not_after=window.ends_at,
                    role="vendor",
                    work_order_id=wo.id,
                )
            )
    keys = (
        await session.exec(
            select(KeyItem).where(
                KeyItem.work_order_id == wo.id,
                KeyItem.state == "in_compartment",
                KeyItem.property_id == wo.property_id,
            )
        )
    ).all()
    for key in keys:
        if key.compartment_id is None:
            continue
        compartment = await session.get(Compartment, key.compartment_id)
        if compartment is None:
            continue
        grants.append(
            Grant(
                kiosk_id=compartment.kiosk_id,
                target=f"compartment:{compartment.id}",
                not_after=window.ends_at,
                role="vendor",
                work_order_id=wo.id,
                key_id=key.id,
            )
        )
    if target is not None:
        grants = [g for g in grants if g.target == target]
        if not grants:
            raise errors.NotFound("That target is not part of this visit right now")
    if not grants:
        raise errors.NothingToOpen("no door is listed and no key is waiting in a compartment")
    return grants


# ------------------------------------------------------------------------------ cancel / shorten


async def _revoke_outstanding(
    session: AsyncSession, wo: WorkOrder, actor: Actor, now: datetime, after: datetime | None
) -> list[str]:
    """Revoke the visit's unredeemed credentials still valid (after ``after``, when given)."""
    from backend.models.credential import Credential
    from backend.services.revocations import revoke

    statement = select(Credential).where(
        Credential.work_order_id == wo.id,
        col(Credential.revoked_at).is_(None),
        col(Credential.redeemed_at).is_(None),
        col(Credential.expires_at) > now,
    )
    revoked = []
    for cred in (await session.exec(statement)).all():
        if after is not None and cred.expires_at <= after:
            continue
        await revoke(
            session,
            property_id=wo.property_id,
            kind="credential",
            subject_id=cred.id,
            reason="work order cancelled" if after is None else "work order shortened",
            actor=f"user:{actor.user_id}",
            now=now,
        )
        revoked.append(cred.id)
    return revoked


async def _pull_due_back(
    session: AsyncSession, wo: WorkOrder, prop: Property, end: datetime
) -> None:
    due = end + timedelta(minutes=policy_of(prop).key_grace_minutes)
    keys = (
        await session.exec(
            select(KeyItem).where(KeyItem.work_order_id == wo.id, KeyItem.state == "checked_out")
        )
    ).all()
    for key in keys:
        if key.due_back_at is None or key.due_back_at > due:
            key.due_back_at = due
            session.add(key)


async def cancel_work_order(
    session: AsyncSession, actor: Actor, work_order_id: str, reason: str | None, now: datetime
) -> WorkOrder:
    wo = await _staff_locked(session, actor, work_order_id)
    if wo.state not in OPEN_STATES:
        raise errors.WorkOrderClosed(f"the visit is already {wo.state}")
    prop = await session.get(Property, wo.property_id)
    assert prop is not None
    wo.state = "cancelled"
    wo.cancelled_at = now
    wo.cancel_reason = reason
    session.add(wo)
    revoked = await _revoke_outstanding(session, wo, actor, now, None)
    await _pull_due_back(session, wo, prop, now)
    await session.flush()
    await _tell(
        session,
        wo,
        "work_order.cancelled",
        f"user:{actor.user_id}",
        now,
        reason=reason,
        revoked_credential_ids=revoked,
    )
    return wo


async def shorten_work_order(
    session: AsyncSession, actor: Actor, work_order_id: str, ends_at: datetime, now: datetime
) -> WorkOrder:
    """No access after ``ends_at`` (at the earliest now); credentials valid beyond it are revoked."""
    wo = await _staff_locked(session, actor, work_order_id)
    if wo.state not in OPEN_STATES:
        raise errors.WorkOrderClosed(f"the visit is already {wo.state}")
    current_end = min(wo.ends_at, wo.ends_early_at) if wo.ends_early_at else wo.ends_at
    if ends_at >= current_end:
        raise errors.InvalidWindow("shortening must move the end earlier")
    prop = await session.get(Property, wo.property_id)
    assert prop is not None
    new_end = max(ends_at, now)
    wo.ends_early_at = new_end
    if not list(windows(wo, _tz(prop), after=now)) and wo.state == "scheduled":
        wo.state = "completed"
    session.add(wo)
    revoked = await _revoke_outstanding(session, wo, actor, now, new_end)
    await _pull_due_back(session, wo, prop, new_end)
    await session.flush()
    await _tell(
        session,
        wo,
        "work_order.shortened",
        f"user:{actor.user_id}",
        now,
        revoked_credential_ids=revoked,
    )
    return wo


# ------------------------------------------------------------------------------ visit lifecycle


async def mark_started(
    session: AsyncSession, wo: WorkOrder, actor: str, now: datetime, **extra: Any
) -> bool:
    """First use of the visit's access in the current window: ``work_order.started``, once."""
    prop = await session.get(Property, wo.property_id)
    assert prop is not None
    grace = timedelta(minutes=policy_of(prop).access_grace_minutes)
    window = current_window(wo, _tz(prop), now, grace)
    window_start = (window.starts_at - grace) if window else now
    if wo.state == "active" and wo.visit_started_at and wo.visit_started_at >= window_start:
        return False
    wo.state = "active"
    wo.visit_started_at = now
    session.add(wo)
    await session.flush()
    await _tell(session, wo, "work_order.started", actor, now, **extra)
    return True


async def mark_ended(
    session: AsyncSession, wo: WorkOrder, actor: str, now: datetime, **extra: Any
) -> None:
    """The visit is over (keys back, or its window closed): ``work_order.ended``."""
    prop = await session.get(Property, wo.property_id)
    assert prop is not None
    later = next_window(wo, _tz(prop), now)
    if wo.state in OPEN_STATES:
        wo.state = "scheduled" if later is not None else "completed"
    wo.last_ended_window_at = now
    session.add(wo)
    await session.flush()
    await _tell(session, wo, "work_order.ended", actor, now, **extra)


async def _remind(
    session: AsyncSession, wo: WorkOrder, tz: ZoneInfo, now: datetime
) -> list[dict[str, Any]]:
    """``work_order.starting`` once per window, when it opens within ``REMINDER_LEAD``."""
    upcoming = next_window(wo, tz, now)
    if upcoming is None or upcoming.starts_at - now > REMINDER_LEAD:
        return []
    sent = (
        await session.exec(
            select(Event.id)
            .where(
                Event.property_id == wo.property_id,
                Event.type == "work_order.starting",
                Event.subject == f"work_order:{wo.id}",
                col(Event.occurred_at) >= upcoming.starts_at - REMINDER_LEAD,
            )
            .limit(1)
        )
    ).first()
    if sent is not None:
        return []
    await _tell(
        session,
        wo,
        "work_order.starting",
        "system",
        now,
        window_starts_at=upcoming.starts_at.isoformat(),
        window_ends_at=upcoming.ends_at.isoformat(),
    )
    return [{"action": "work_order.starting", "work_order_id": wo.id}]


async def close_finished_visits(
    session: AsyncSession, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """Policy job part: the vendor is reminded ``REMINDER_LEAD`` before a window; started
    visits whose window closed with no key out are ended; scheduled visits with no window
    left are completed."""
    actions: list[dict[str, Any]] = []
    tz = _tz(prop)
    grace = timedelta(minutes=policy_of(prop).access_grace_minutes)
    rows = (
        await session.exec(
            select(WorkOrder)
            .where(WorkOrder.property_id == prop.id, col(WorkOrder.state).in_(OPEN_STATES))
            .order_by(col(WorkOrder.id))
            .with_for_update()
        )
    ).all()
    for wo in rows:
        if wo.state == "scheduled":
            actions.extend(await _remind(session, wo, tz, now))
        if current_window(wo, tz, now, grace) is not None:
            continue
        keys_out = (
            await session.exec(
                select(KeyItem.id)
                .where(KeyItem.work_order_id == wo.id, KeyItem.state == "checked_out")
                .limit(1)
            )
        ).first()
        if keys_out is not None:
            continue
        if wo.state == "active":
            await mark_ended(session, wo, "system", now, reason="window_closed")
            actions.append({"action": "work_order.ended", "work_order_id": wo.id})
        elif next_window(wo, tz, now) is None:
            wo.state = "completed"
            session.add(wo)
            await session.flush()
            actions.append({"action": "work_order.completed", "work_order_id": wo.id})
    return actions
