"""Door and tamper reports from kiosks: events and staff alerts.

Kiosks journal what their sensors see: ``door.opened`` / ``door.closed``, ``door.held_open``
(open longer than the policy's ``door_held_open_seconds``), ``door.forced`` (opened without a
granted decision), ``kiosk.tamper`` (the enclosure switch) and ``compartment.opened``. Each
becomes an Event of the property with no unit or user: only staff see it. ``door.forced`` and
``kiosk.tamper`` are ``critical`` (push cannot mute them); ``door.held_open`` is a warning that
repeats every ``door_held_open_repeat_seconds`` while the door stays open (the policy job
re-alerts when the kiosk goes quiet).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import Compartment, Door, Kiosk, Property
from backend.models.work_order import DoorStatus
from backend.runtime import Runtime
from backend.services.events import record_event
from backend.services.keys import _optional
from backend.services.properties import policy_of

SEVERITIES = {
    "door.opened": "info",
    "door.closed": "info",
    "door.held_open": "warning",
    "door.forced": "critical",
    "kiosk.tamper": "critical",
    "compartment.opened": "info",
}


async def _door_of(session: AsyncSession, kiosk: Kiosk, door_id: Any) -> Door | None:
    if not isinstance(door_id, str):
        return None
    door = await session.get(Door, door_id)
    if door is None or door.kiosk_id != kiosk.id:
        return None
    return door


async def _status(session: AsyncSession, door: Door, now: datetime) -> DoorStatus:
    status = (
        await session.exec(
            select(DoorStatus).where(DoorStatus.door_id == door.id).with_for_update()
        )
    ).first()
    if status is None:
        status = DoorStatus(door_id=door.id, property_id=door.property_id, changed_at=now)
    return status


async def on_door_report(session: AsyncSession, kiosk: Kiosk, entry: Any, now: datetime) -> None:
    """JOURNAL_HANDLER for door.* and kiosk.tamper and compartment.opened entries."""
    data: dict[str, Any] = entry.data if isinstance(entry.data, dict) else {}
    occurred: datetime = entry.occurred_at or now
    type_: str = entry.type
    payload: dict[str, Any] = {"kiosk_id": kiosk.id, "seq": entry.seq}
    severity = SEVERITIES.get(type_, "info")
    if type_.startswith("door."):
        door = await _door_of(session, kiosk, data.get("door_id"))
        if door is None:
            if type_ in ("door.opened", "door.closed"):
                return  # nothing to tell about an unknown door; the entry stays stored
            payload["reported_door_id"] = str(data.get("door_id"))[:32]
        else:
            payload["door_id"] = door.id
            payload["door_name"] = door.name
            status = await _status(session, door, occurred)
            if type_ in ("door.opened", "door.forced", "door.held_open"):
                if status.state != "open":
                    status.state, status.changed_at = "open", occurred
                if type_ == "door.held_open":
                    status.held_open_alerted_at = max(
                        occurred, status.held_open_alerted_at or occurred
                    )
            elif type_ == "door.closed":
                status.state, status.changed_at, status.held_open_alerted_at = (
                    "closed",
                    occurred,
                    None,
                )
            session.add(status)
            await session.flush()
        for field in ("open_seconds", "decision_seq", "channel"):
            if isinstance(data.get(field), int | float | str):
                payload[field] = data[field]
    elif type_ == "compartment.opened":
        compartment_id = data.get("compartment_id")
        compartment = (
            await session.get(Compartment, compartment_id)
            if isinstance(compartment_id, str)
            else None
        )
        if compartment is None or compartment.kiosk_id != kiosk.id:
            return
        payload["compartment_id"] = compartment.id
        payload["label"] = compartment.label
        if data.get("forced") is True:
            payload["forced"] = True
            severity = "critical"
    elif type_ == "kiosk.tamper":
        detail = data.get("detail") or data.get("switch")
        if isinstance(detail, str):
            payload["detail"] = detail[:200]
    await record_event(
        session,
        property_id=kiosk.property_id,
        type=type_,
        actor=f"kiosk:{kiosk.id}",
        subject=f"door:{payload['door_id']}" if "door_id" in payload else f"kiosk:{kiosk.id}",
        payload=payload,
        occurred_at=occurred,
        severity=severity,
        notify=type_ != "door.closed",
    )


async def held_open_job(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """POLICY_JOB: a door still open past the limit is re-alerted every repeat interval."""
    limit = timedelta(seconds=policy_of(prop).door_held_open_seconds)
    repeat = timedelta(seconds=runtime.settings.door_held_open_repeat_seconds)
    actions: list[dict[str, Any]] = []
    rows = (
        await session.exec(
            select(DoorStatus)
            .where(DoorStatus.property_id == prop.id, DoorStatus.state == "open")
            .with_for_update()
        )
    ).all()
    for status in rows:
        last = status.held_open_alerted_at
        # Not yet past the limit, unless the kiosk already reported it held open.
        if last is None and now - status.changed_at < limit:
            continue
        if last is not None and now - last < repeat:
            continue
        status.held_open_alerted_at = now
        session.add(status)
        await session.flush()
        door = await session.get(Door, status.door_id)
        open_seconds = int((now - status.changed_at).total_seconds())
        await record_event(
            session,
            property_id=prop.id,
            type="door.held_open",
            actor="system",
            subject=f"door:{status.door_id}",
            payload={
                "door_id": status.door_id,
                "door_name": door.name if door else None,
                "kiosk_id": door.kiosk_id if door else None,
                "open_seconds": open_seconds,
                "repeated": last is not None,
            },
            occurred_at=now,
            severity="warning",
        )
        actions.append(
            {"action": "door.held_open", "door_id": status.door_id, "open_seconds": open_seconds}
        )
    return actions


def _register() -> None:
    journal = _optional("backend.services.journal")
    if journal is not None:
        for type_ in SEVERITIES:
            journal.JOURNAL_HANDLERS[type_] = on_door_report
    policy = _optional("backend.services.policy")
    if policy is not None and held_open_job not in policy.POLICY_JOBS:
        policy.POLICY_JOBS.append(held_open_job)


_register()
