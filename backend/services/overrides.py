"""Manual override: staff remote-open a door or compartment through an online kiosk.

The command goes over the kiosk's command channel (``realtime.kiosk_channel``) and the kiosk's
acknowledgement is the answer. Every override that reached the kiosk is audited as an
``override.used`` event (who, which kiosk and target, the mandatory reason, the kiosk's ack),
visible live to the property's staff. A kiosk with no open channel is ``kiosk_offline``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import Compartment, Door, Kiosk
from backend.models.base import new_id
from backend.runtime import Runtime
from backend.scoping import get_in_property
from backend.services.events import record_event


async def open_remotely(
    session: AsyncSession,
    runtime: Runtime,
    actor: Actor,
    kiosk_id: str,
    *,
    action: str,
    door_id: str | None,
    compartment_id: str | None,
    reason: str,
    now: datetime,
) -> dict[str, Any]:
    kiosk = await get_in_property(session, actor, Kiosk, kiosk_id, label="Kiosk")
    if action != "open":
        raise errors.ValidationFailed("action must be open")
    reason = reason.strip()
    if not reason:
        raise errors.ValidationFailed("a reason is required")
    if (door_id is None) == (compartment_id is None):
        raise errors.ValidationFailed("give exactly one of door_id and compartment_id")
    command: dict[str, Any] = {"type": "command", "id": new_id(), "action": "open"}
    payload: dict[str, Any] = {"kiosk_id": kiosk.id, "reason": reason, "command_id": command["id"]}
    if door_id is not None:
        door = await session.get(Door, door_id)
        if door is None or door.kiosk_id != kiosk.id:
            raise errors.NotFound("Door not found on this kiosk")
        command["door_id"] = payload["door_id"] = door.id
        target = f"door:{door.id}"
    else:
        compartment = await session.get(Compartment, compartment_id)
        if compartment is None or compartment.kiosk_id != kiosk.id:
            raise errors.NotFound("Compartment not found on this kiosk")
        command["compartment_id"] = payload["compartment_id"] = compartment.id
        target = f"compartment:{compartment.id}"
    command["reason"] = reason
    property_id = kiosk.property_id

    from realtime.kiosk_channel import send_command

    # End the (read-only) transaction before waiting on the network: a transaction holds
    # SQLite's write lock (BEGIN IMMEDIATE) and PostgreSQL connection state; the audit event
    # below is written in a fresh one, committed by the caller's unit of work as usual.
    await session.commit()

    timeout = runtime.settings.override_ack_timeout_seconds
    try:
        ack = await send_command(runtime, kiosk.id, command, timeout)
    except TimeoutError:
        ack = {"id": command["id"], "ok": False, "detail": "no acknowledgement from the kiosk"}
        acknowledged = False
    else:
        acknowledged = True
    ok = bool(ack.get("ok")) if isinstance(ack, dict) else False
    detail = str(ack.get("detail", ""))[:200] if isinstance(ack, dict) else ""
    payload.update({"target": target, "acknowledged": acknowledged, "ok": ok, "detail": detail})
    await record_event(
        session,
        property_id=property_id,
        type="override.used",
        actor=f"user:{actor.user_id}",
        subject=target,
        payload=payload,
        occurred_at=now,
        severity="warning",
    )
    return {
        "command_id": command["id"],
        "kiosk_id": kiosk.id,
        "action": "open",
        "target": target,
        "acknowledged": acknowledged,
        "ok": ok,
        "detail": detail,
    }
