"""Key control: a chain of custody for unit keys, masters and fobs.

Invariant: a key is in one place at a time (office, one key compartment, one person) and
every movement appends a ``KeyCustody`` row and an Event in the same transaction, so "who
holds key X since when" and the full history are always answerable.

Movements and who causes them:
- staff create a key (office), place it in a key compartment (optionally for a visit), take it
  back to the office, or mark it lost;
- a kiosk reports a redeemed credential whose target compartment holds a key for that visit
  (or the resident-lockout credential for that key): the key is ``checked_out`` to the
  credential's holder, due back at the window's end plus ``key_grace_minutes``;
- a kiosk reports ``key.returned`` into a free key compartment; a return into a parcel
  compartment (or an occupied one) is not accepted and is flagged to staff instead;
- the policy job raises ``key.overdue`` for keys past due, repeating every
  ``key_overdue_repeat_seconds`` until they come back.
"""

from __future__ import annotations

import importlib
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import Compartment, Kiosk, Membership, Property, Unit, WorkOrder
from backend.models.work_order import KeyCustody, KeyItem
from backend.runtime import Runtime
from backend.scoping import get_in_property, staff_property
from backend.services import work_orders
from backend.services.events import record_event
from backend.services.properties import policy_of

log = logging.getLogger("concierge.keys")

KINDS = ("unit", "master", "fob")
LOCKOUT_TTL = timedelta(hours=1)


async def _locked_key(session: AsyncSession, key_id: str) -> KeyItem | None:
    """The key row locked for this transaction, re-read (not a stale identity-map copy)."""
    return (
        await session.exec(
            select(KeyItem)
            .where(KeyItem.id == key_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()


async def _locked_compartment(session: AsyncSession, compartment_id: str) -> Compartment | None:
    """Two keys must never be placed or returned into one compartment at once."""
    return (
        await session.exec(
            select(Compartment)
            .where(Compartment.id == compartment_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()


async def staff_key(session: AsyncSession, actor: Actor, key_id: str) -> KeyItem:
    key = await get_in_property(session, actor, KeyItem, key_id, label="Key")
    locked = await _locked_key(session, key.id)
    assert locked is not None
    return locked


async def _move(
    session: AsyncSession,
    key: KeyItem,
    action: str,
    actor: str,
    now: datetime,
    *,
    event: str | None,
    kiosk_id: str | None = None,
    credential_id: str | None = None,
    note: str | None = None,
    severity: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Persist the key's new place, append its custody row, then (last) its event."""
    session.add(key)
    session.add(
        KeyCustody(
            key_id=key.id,
            property_id=key.property_id,
            action=action,
            at=now,
            actor=actor,
            user_id=key.holder_user_id,
            kiosk_id=kiosk_id,
            compartment_id=key.compartment_id,
            work_order_id=key.work_order_id,
            credential_id=credential_id,
            note=note,
        )
    )
    await session.flush()
    if event is None:
        return
    payload: dict[str, Any] = {
        "key_id": key.id,
        "label": key.label,
        "state": key.state,
        "unit_id": key.unit_id,
        "compartment_id": key.compartment_id,
        "holder_user_id": key.holder_user_id,
        "work_order_id": key.work_order_id,
        "due_back_at": key.due_back_at.isoformat() if key.due_back_at else None,
    }
    if kiosk_id:
        payload["kiosk_id"] = kiosk_id
    if credential_id:
        payload["credential_id"] = credential_id
    payload.update(extra or {})
    await record_event(
        session,
        property_id=key.property_id,
        type=event,
        actor=actor,
        subject=f"key:{key.id}",
        payload=payload,
        unit_id=key.unit_id,
        user_id=(extra or {}).get("user_id", key.holder_user_id),
        occurred_at=now,
        severity=severity,
    )


# ----------------------------------------------------------------------------- staff actions


async def create_key(
    session: AsyncSession,
    actor: Actor,
    property_id: str,
    *,
    label: str,
    kind: str,
    unit_id: str | None,
    now: datetime,
) -> KeyItem:
    await staff_property(session, actor, property_id)
    if kind not in KINDS:
        raise errors.ValidationFailed("kind must be unit, master or fob")
    if unit_id is not None:
        unit = await session.get(Unit, unit_id)
        if unit is None or unit.property_id != property_id:
            raise errors.NotFound("Unit not found")
    key = KeyItem(
        property_id=property_id, label=label.strip(), kind=kind, unit_id=unit_id, since=now
    )
    session.add(key)
    await session.flush()
    await _move(session, key, "created", f"user:{actor.user_id}", now, event="key.created")
    return key


async def place_key(
    session: AsyncSession,
    actor: Actor,
    key_id: str,
    *,
    compartment_id: str,
    work_order_id: str | None,
    now: datetime,
) -> KeyItem:
    """Staff put the key in a free key compartment (for a visit, or for a lockout)."""
    key = await staff_key(session, actor, key_id)
    if key.state == "checked_out":
        raise errors.KeyCheckedOut("the key is checked out; it must be returned first")
    if key.state == "lost":
        raise errors.KeyUnavailable("the key is marked lost")
    await get_in_property(session, actor, Compartment, compartment_id, label="Compartment")
    compartment = await _locked_compartment(session, compartment_id)
    assert compartment is not None
    kiosk = await session.get(Kiosk, compartment.kiosk_id)
    if kiosk is None or kiosk.property_id != key.property_id:
        raise errors.NotFound("Compartment not found")
    if compartment.purpose != "key":
        raise errors.NotAKeyCompartment("that is a parcel compartment")
    if compartment.id != key.compartment_id and compartment.state != "free":
        raise errors.CompartmentOccupied(f"compartment {compartment.label} is {compartment.state}")
    wo: WorkOrder | None = None
    if work_order_id is not None:
        await work_orders.staff_work_order(session, actor, work_order_id)
        wo = await work_orders.locked_work_order(session, work_order_id)
        assert wo is not None
        if wo.property_id != key.property_id:
            raise errors.NotFound("Work order not found")
        if wo.state not in work_orders.OPEN_STATES:
            raise errors.WorkOrderClosed(f"the visit is {wo.state}")
    if key.compartment_id and key.compartment_id != compartment.id:
        await _set_compartment_state(session, key.compartment_id, "free")
    compartment.state = "occupied"
    session.add(compartment)
    if wo is not None and key.id not in wo.key_ids:
        wo.key_ids = [*wo.key_ids, key.id]
        session.add(wo)
    key.state = "in_compartment"
    key.compartment_id = compartment.id
    key.holder_user_id = None
    key.due_back_at = None
    key.work_order_id = wo.id if wo else None
    key.lockout_user_id, key.lockout_expires_at = None, None
    key.since = now
    extra: dict[str, Any] = {"kiosk_id": compartment.kiosk_id}
    if wo is not None:
        extra["user_id"] = wo.vendor_user_id
    await _move(
        session,
        key,
        "placed",
        f"user:{actor.user_id}",
        now,
        event="key.placed",
        kiosk_id=compartment.kiosk_id,
        extra=extra,
    )
    return key


async def _set_compartment_state(session: AsyncSession, compartment_id: str, state: str) -> None:
    compartment = await session.get(Compartment, compartment_id)
    if compartment is not None and compartment.purpose == "key":
        compartment.state = state
        session.add(compartment)


async def retrieve_key(
    session: AsyncSession, actor: Actor, key_id: str, note: str | None, now: datetime
) -> KeyItem:
    """Back in the office: taken out of its compartment by staff, or handed in at the desk."""
    key = await staff_key(session, actor, key_id)
    if key.state == "in_office":
        raise errors.Conflict("the key is already in the office")
    previous_holder = key.holder_user_id
    if key.compartment_id:
        await _set_compartment_state(session, key.compartment_id, "free")
    key.state, key.compartment_id, key.holder_user_id = "in_office", None, None
    key.due_back_at, key.since = None, now
    key.lockout_user_id, key.lockout_expires_at = None, None
    await _move(
        session,
        key,
        "retrieved",
        f"user:{actor.user_id}",
        now,
        event="key.returned" if previous_holder else "key.retrieved",
        note=note,
        extra={"user_id": previous_holder, "where": "office"},
    )
    await _maybe_end_visit(session, key, f"user:{actor.user_id}", now)
    return key


async def mark_lost(
    session: AsyncSession, actor: Actor, key_id: str, note: str | None, now: datetime
) -> KeyItem:
    key = await staff_key(session, actor, key_id)
    if key.state == "lost":
        raise errors.Conflict("the key is already marked lost")
    previous_holder = key.holder_user_id
    if key.compartment_id:
        await _set_compartment_state(session, key.compartment_id, "free")
    key.state, key.compartment_id, key.due_back_at, key.since = "lost", None, None, now
    await _move(
        session,
        key,
        "lost",
        f"user:{actor.user_id}",
        now,
        event="key.lost",
        note=note,
        severity="warning",
        extra={"user_id": previous_holder},
    )
    return key


async def custody(session: AsyncSession, actor: Actor, key_id: str) -> list[KeyCustody]:
    key = await get_in_property(session, actor, KeyItem, key_id, label="Key")
    rows = await session.exec(
        select(KeyCustody).where(KeyCustody.key_id == key.id).order_by(col(KeyCustody.id))
    )
    return list(rows.all())


# ------------------------------------------------------------------------------ kiosk reports


async def _due_back(session: AsyncSession, key: KeyItem, at: datetime) -> datetime | None:
    if key.work_order_id is None:
        return None
    wo = await session.get(WorkOrder, key.work_order_id)
    prop = await session.get(Property, key.property_id)
    if wo is None or prop is None:
        return None
    policy = policy_of(prop)
    tz = work_orders._tz(prop)
    window = work_orders.current_window(wo, tz, at, timedelta(minutes=policy.access_grace_minutes))
    end = window.ends_at if window else at
    return end + timedelta(minutes=policy.key_grace_minutes)


async def on_credential_redeemed(
    session: AsyncSession, kiosk: Kiosk, credential: Any, entry: Any, now: datetime
) -> None:
    """REDEMPTION_HOOK: a visit's (or lockout's) compartment opened -> its key is checked out.

    Locks the key first, then the visit (the order placing and returning use)."""
    occurred = entry.occurred_at or now
    target: str = credential.target or ""
    if target.startswith("door:"):
        if credential.work_order_id:
            wo = await work_orders.locked_work_order(session, credential.work_order_id)
            if wo is not None and not wo.key_ids:
                await work_orders.mark_started(
                    session,
                    wo,
                    f"kiosk:{kiosk.id}",
                    occurred,
                    door_id=target[5:],
                    kiosk_id=kiosk.id,
                )
        return
    if not target.startswith("compartment:") or not (credential.work_order_id or credential.key_id):
        return
    compartment_id = target.split(":", 1)[1]
    key = (
        await session.exec(
            select(KeyItem)
            .where(KeyItem.compartment_id == compartment_id, KeyItem.state == "in_compartment")
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    if key is None or key.property_id != kiosk.property_id:
        return
    if credential.key_id and key.id != credential.key_id:
        return
    wo = None
    if credential.work_order_id:
        wo = await work_orders.locked_work_order(session, credential.work_order_id)
        if wo is None or key.work_order_id != wo.id:
            return
    elif key.lockout_user_id != credential.user_id:
        return
    await _set_compartment_state(session, compartment_id, "free")
    key.state = "checked_out"
    key.holder_user_id = credential.user_id
    key.compartment_id = None
    key.since = occurred
    key.due_back_at = await _due_back(session, key, occurred)
    key.last_overdue_alert_at, key.overdue_alerts = None, 0
    key.lockout_user_id, key.lockout_expires_at = None, None
    await _move(
        session,
        key,
        "checked_out",
        f"kiosk:{kiosk.id}",
        occurred,
        event="key.checked_out",
        kiosk_id=kiosk.id,
        credential_id=credential.id,
        extra={"from_compartment_id": compartment_id},
    )
    if wo is not None:
        await work_orders.mark_started(
            session, wo, f"kiosk:{kiosk.id}", occurred, key_id=key.id, kiosk_id=kiosk.id
        )


async def _flag_return(
    session: AsyncSession, kiosk: Kiosk, entry: Any, reason: str, **extra: Any
) -> None:
    payload = {"kiosk_id": kiosk.id, "reason": reason, "seq": entry.seq, **extra}
    await record_event(
        session,
        property_id=kiosk.property_id,
        type="key.return_flagged",
        actor=f"kiosk:{kiosk.id}",
        subject=f"kiosk:{kiosk.id}",
        payload=payload,
        occurred_at=entry.occurred_at,
        severity="warning",
    )


class ReturnRefused(Exception):
    """Why a key return is not accepted (``reason``), and the documented error for it."""

    def __init__(self, reason: str, error: errors.ConciergeError, **known: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.known = known


async def _check_return(
    session: AsyncSession,
    kiosk: Kiosk,
    key_id: Any,
    compartment_id: Any,
    holder_hint: Any = None,
) -> tuple[KeyItem, Compartment]:
    """The key and the free key compartment of this kiosk it goes into, or ``ReturnRefused``.

    Locks the key row, then the compartment row (the order ``place_key`` uses too)."""
    if not isinstance(key_id, str) and isinstance(holder_hint, str):
        held = (
            await session.exec(
                select(KeyItem).where(
                    KeyItem.holder_user_id == holder_hint,
                    KeyItem.state == "checked_out",
                    KeyItem.property_id == kiosk.property_id,
                )
            )
        ).all()
        key_id = held[0].id if len(held) == 1 else None
    key = await _locked_key(session, key_id) if isinstance(key_id, str) else None
    compartment = (
        await _locked_compartment(session, compartment_id)
        if isinstance(compartment_id, str)
        else None
    )
    if compartment is None or compartment.kiosk_id != kiosk.id:
        raise ReturnRefused(
            "unknown_compartment", errors.NotFound("Compartment not found"), key_id=key_id
        )
    if key is None or key.property_id != kiosk.property_id:
        raise ReturnRefused(
            "unknown_key",
            errors.NotFound("Key not found"),
            key_id=key_id,
            compartment_id=compartment.id,
        )
    where = {"key_id": key.id, "compartment_id": compartment.id}
    if compartment.purpose != "key":
        raise ReturnRefused(
            "parcel_compartment",
            errors.NotAKeyCompartment("keys are returned into key compartments only"),
            **where,
        )
    if compartment.state != "free":
        raise ReturnRefused(
            "compartment_occupied",
            errors.CompartmentOccupied(f"compartment {compartment.label} is {compartment.state}"),
            **where,
        )
    if key.state != "checked_out":
        raise ReturnRefused(
            f"key_{key.state}", errors.KeyUnavailable(f"the key is {key.state}"), **where
        )
    return key, compartment


async def _accept_return(
    session: AsyncSession, kiosk: Kiosk, key: KeyItem, compartment: Compartment, at: datetime
) -> KeyItem:
    previous_holder = key.holder_user_id
    compartment.state = "occupied"
    session.add(compartment)
    was_overdue = key.due_back_at is not None and at > key.due_back_at
    key.state, key.compartment_id, key.holder_user_id = "in_compartment", compartment.id, None
    key.since, key.due_back_at = at, None
    await _move(
        session,
        key,
        "returned",
        f"kiosk:{kiosk.id}",
        at,
        event="key.returned",
        kiosk_id=kiosk.id,
        extra={"user_id": previous_holder, "late": was_overdue},
    )
    await _maybe_end_visit(session, key, f"kiosk:{kiosk.id}", at)
    return key


async def return_key(
    session: AsyncSession, kiosk: Kiosk, *, key_id: str, compartment_id: str, now: datetime
) -> KeyItem:
    """Online return at a kiosk (``POST /v1/kiosk/key-returns``): refused with a documented
    error (and nothing written) when the compartment is not a free key compartment of this
    kiosk or the key is not checked out, so the kiosk can ask for another compartment."""
    try:
        key, compartment = await _check_return(session, kiosk, key_id, compartment_id)
    except ReturnRefused as refused:
        raise refused.error from None
    return await _accept_return(session, kiosk, key, compartment, now)


async def on_key_returned(session: AsyncSession, kiosk: Kiosk, entry: Any, now: datetime) -> None:
    """JOURNAL_HANDLER "key.returned": data {key_id?, compartment_id, sub?}.

    The journal tells what already happened offline, so a return that breaks the rules is
    not applied but flagged to staff (``key.return_flagged``, warning)."""
    data: dict[str, Any] = entry.data or {}
    try:
        key, compartment = await _check_return(
            session, kiosk, data.get("key_id"), data.get("compartment_id"), data.get("sub")
        )
    except ReturnRefused as refused:
        await _flag_return(session, kiosk, entry, refused.reason, **refused.known)
        return
    await _accept_return(session, kiosk, key, compartment, entry.occurred_at or now)


async def _maybe_end_visit(session: AsyncSession, key: KeyItem, actor: str, now: datetime) -> None:
    """The last of a started visit's keys came back: the visit has ended."""
    if key.work_order_id is None:
        return
    wo = await work_orders.locked_work_order(session, key.work_order_id)
    if wo is None or wo.state != "active":
        return
    still_out = (
        await session.exec(
            select(KeyItem.id)
            .where(KeyItem.work_order_id == wo.id, KeyItem.state == "checked_out")
            .limit(1)
        )
    ).first()
    if still_out is None:
        await work_orders.mark_ended(session, wo, actor, now, reason="keys_returned", key_id=key.id)


# ------------------------------------------------------------------------------ overdue job


async def overdue_job(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """POLICY_JOB: alert for keys past due, again every ``key_overdue_repeat_seconds``."""
    repeat = timedelta(seconds=runtime.settings.key_overdue_repeat_seconds)
    actions: list[dict[str, Any]] = []
    rows = (
        await session.exec(
            select(KeyItem)
            .where(
                KeyItem.property_id == prop.id,
                KeyItem.state == "checked_out",
                col(KeyItem.due_back_at).is_not(None),
                col(KeyItem.due_back_at) < now,
            )
            .order_by(col(KeyItem.id))
            .with_for_update()
        )
    ).all()
    for key in rows:
        if key.last_overdue_alert_at is not None and now - key.last_overdue_alert_at < repeat:
            continue
        assert key.due_back_at is not None
        key.last_overdue_alert_at = now
        key.overdue_alerts += 1
        session.add(key)
        await session.flush()
        minutes = int((now - key.due_back_at).total_seconds() // 60)
        await record_event(
            session,
            property_id=prop.id,
            type="key.overdue",
            actor="system",
            subject=f"key:{key.id}",
            payload={
                "key_id": key.id,
                "label": key.label,
                "unit_id": key.unit_id,
                "holder_user_id": key.holder_user_id,
                "work_order_id": key.work_order_id,
                "due_back_at": key.due_back_at.isoformat(),
                "overdue_minutes": minutes,
                "alert": key.overdue_alerts,
            },
            unit_id=key.unit_id,
            user_id=key.holder_user_id,
            occurred_at=now,
            severity="warning",
        )
        actions.append(
            {
                "action": "key.overdue",
                "property_id": prop.id,
                "key_id": key.id,
                "holder_user_id": key.holder_user_id,
                "overdue_minutes": minutes,
                "alert": key.overdue_alerts,
            }
        )
    return actions


async def visits_job(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """POLICY_JOB: end visits whose window closed with every key back."""
    return await work_orders.close_finished_visits(session, prop, now)


async def overdue_count(session: AsyncSession, property_id: str, now: datetime) -> int:
    """Keys past due right now (for the weekly report)."""
    rows = await session.exec(
        select(KeyItem.id).where(
            KeyItem.property_id == property_id,
            KeyItem.state == "checked_out",
            col(KeyItem.due_back_at).is_not(None),
            col(KeyItem.due_back_at) < now,
        )
    )
    return len(rows.all())


# ------------------------------------------------------------------------------ resident lockout


async def authorise_lockout(
    session: AsyncSession, actor: Actor, key_id: str, user_id: str, now: datetime
) -> KeyItem:
    """Staff let a locked-out resident take their own unit key once (within an hour)."""
    key = await staff_key(session, actor, key_id)
    if key.kind != "unit" or key.unit_id is None:
        raise errors.ValidationFailed("lockout access is for unit keys")
    resident = (
        await session.exec(
            select(Membership).where(
                Membership.user_id == user_id,
                Membership.property_id == key.property_id,
                Membership.role == "resident",
                Membership.unit_id == key.unit_id,
            )
        )
    ).first()
    if resident is None:
        raise errors.NotFound("Resident of that key's unit not found")
    if key.state == "checked_out":
        raise errors.KeyCheckedOut("the key is checked out")
    if key.state != "in_compartment":
        raise errors.KeyUnavailable("place the key in a key compartment first")
    key.lockout_user_id = user_id
    key.lockout_expires_at = now + LOCKOUT_TTL
    key.work_order_id = None
    await _move(
        session,
        key,
        "lockout_authorised",
        f"user:{actor.user_id}",
        now,
        event="key.lockout_authorised",
        extra={"user_id": user_id, "expires_at": key.lockout_expires_at.isoformat()},
    )
    return key


async def lockout_grants(
    session: AsyncSession, actor: Actor, key_id: str, now: datetime
) -> list[Any]:
    """The one grant a locked-out resident gets for their key's compartment; consumed."""
    from backend.services.grants import Grant

    key = await _locked_key(session, key_id)
    if key is None or key.lockout_user_id != actor.user_id or key.unit_id not in actor.unit_ids:
        raise errors.NotFound("Key not found")
    if key.lockout_expires_at is None or key.lockout_expires_at <= now:
        raise errors.NotFound("Key not found")
    if key.state != "in_compartment" or key.compartment_id is None:
        raise errors.KeyUnavailable("the key is not waiting in a compartment")
    compartment = await session.get(Compartment, key.compartment_id)
    assert compartment is not None
    expires = key.lockout_expires_at
    # One-time: the authorisation is used up by this issuance (the key stays reserved for
    # this resident until the credential is redeemed or expires).
    key.lockout_expires_at = now
    session.add(key)
    await session.flush()
    return [
        Grant(
            kiosk_id=compartment.kiosk_id,
            target=f"compartment:{compartment.id}",
            not_after=expires,
            role="resident",
            key_id=key.id,
        )
    ]


def _optional(module: str) -> Any:
    """A feature module that may not be installed yet (None), without masking its own errors."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        log.warning("%s missing: key hooks not registered there", module)
        return None


def _register() -> None:
    """Hook into kiosk journal ingest and the policy engine."""
    journal = _optional("backend.services.journal")
    if journal is not None:
        if on_credential_redeemed not in journal.REDEMPTION_HOOKS:
            journal.REDEMPTION_HOOKS.append(on_credential_redeemed)
        journal.JOURNAL_HANDLERS["key.returned"] = on_key_returned
    policy = _optional("backend.services.policy")
    if policy is not None:
        for job in (overdue_job, visits_job):
            if job not in policy.POLICY_JOBS:
                policy.POLICY_JOBS.append(job)


_register()
