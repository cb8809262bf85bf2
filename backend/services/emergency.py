"""Break-glass access: a property-wide emergency credential for permitted staff.

Rules: only a staff member of the property whose membership has ``can_emergency`` may ask;
the permission is granted or withdrawn by an admin or by a staff member who holds it. When the
property's policy says ``emergency_requires_approval``, a second, different staff member of the
property approves the request first (within ``APPROVAL_TTL``) and then the requester collects
the credential once. The credential is signed with the separate emergency key (typ
``concierge-emergency+jwt``, aud ``property:<id>``), lives ``emergency_credential_ttl_seconds``,
and every use a kiosk reports raises a critical ``emergency.used`` alert to all staff.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import EmergencyRequest, Kiosk, Membership
from backend.runtime import Runtime
from backend.scoping import staff_property
from backend.services.events import record_event
from backend.services.keys import _optional
from backend.services.properties import policy_of

APPROVAL_TTL = timedelta(minutes=15)


async def _staff_membership(
    session: AsyncSession, property_id: str, user_id: str
) -> Membership | None:
    return (
        await session.exec(
            select(Membership).where(
                Membership.property_id == property_id,
                Membership.user_id == user_id,
                Membership.role == "staff",
            )
        )
    ).first()


async def set_permission(
    session: AsyncSession,
    actor: Actor,
    property_id: str,
    user_id: str,
    allowed: bool,
    now: datetime,
) -> Membership:
    await staff_property(session, actor, property_id)
    if not actor.is_admin:
        own = await _staff_membership(session, property_id, actor.user_id)
        if own is None or not own.can_emergency:
            raise errors.EmergencyNotPermitted(
                "only admins and staff holding the permission may grant it"
            )
    member = await _staff_membership(session, property_id, user_id)
    if member is None:
        raise errors.NotFound("Staff member not found")
    member.can_emergency = allowed
    session.add(member)
    await session.flush()
    await record_event(
        session,
        property_id=property_id,
        type="emergency.permission_changed",
        actor=f"user:{actor.user_id}",
        subject=f"user:{user_id}",
        payload={"user_id": user_id, "can_emergency": allowed},
        user_id=user_id,
        occurred_at=now,
        notify=False,
    )
    return member


async def _issue(
    session: AsyncSession, runtime: Runtime, request: EmergencyRequest, now: datetime
) -> Any:
    from backend.services.credentials import issue_emergency

    credential = await issue_emergency(
        session,
        runtime,
        user_id=request.requested_by,
        device_id=request.device_id,
        property_id=request.property_id,
        now=now,
        ttl_seconds=runtime.settings.emergency_credential_ttl_seconds,
    )
    request.state = "issued"
    request.credential_id = credential.id
    session.add(request)
    await session.flush()
    await record_event(
        session,
        property_id=request.property_id,
        type="emergency.issued",
        actor=f"user:{request.requested_by}",
        subject=f"credential:{credential.id}",
        payload={
            "request_id": request.id,
            "credential_id": credential.id,
            "holder_user_id": request.requested_by,
            "approved_by": request.approved_by,
            "reason": request.reason,
            "expires_at": credential.expires_at.isoformat(),
        },
        occurred_at=now,
        severity="warning",
    )
    return credential


async def request_access(
    session: AsyncSession,
    runtime: Runtime,
    actor: Actor,
    property_id: str,
    *,
    device_id: str,
    reason: str,
    now: datetime,
) -> tuple[EmergencyRequest, Any | None]:
    """Issue at once, or open a request for a second staff member's approval."""
    prop = await staff_property(session, actor, property_id)
    reason = reason.strip()
    if not reason:
        raise errors.ValidationFailed("a reason is required")
    member = await _staff_membership(session, property_id, actor.user_id)
    if member is None or not member.can_emergency:
        raise errors.EmergencyNotPermitted("you do not hold the emergency permission here")
    request = EmergencyRequest(
        property_id=property_id,
        requested_by=actor.user_id,
        device_id=device_id,
        reason=reason,
        expires_at=now + APPROVAL_TTL,
        created_at=now,
    )
    session.add(request)
    await session.flush()
    if not policy_of(prop).emergency_requires_approval:
        credential = await _issue(session, runtime, request, now)
        return request, credential
    # Validate the device now so a request is not approved for a phone that cannot use it.
    from backend.services.credentials import _device

    await _device(session, actor.user_id, device_id)
    await record_event(
        session,
        property_id=property_id,
        type="emergency.requested",
        actor=f"user:{actor.user_id}",
        subject=f"emergency_request:{request.id}",
        payload={"request_id": request.id, "requested_by": actor.user_id, "reason": reason},
        occurred_at=now,
        severity="warning",
    )
    return request, None


async def _request(session: AsyncSession, actor: Actor, request_id: str) -> EmergencyRequest:
    request = (
        await session.exec(
            select(EmergencyRequest).where(EmergencyRequest.id == request_id).with_for_update()
        )
    ).first()
    if request is None or not actor.is_staff_at(request.property_id):
        raise errors.NotFound("Emergency request not found")
    return request


def _check_live(request: EmergencyRequest, state: str, now: datetime) -> None:
    if request.expires_at <= now and request.state in ("pending", "approved"):
        raise errors.Conflict("the request has expired; ask again")
    if request.state != state:
        raise errors.Conflict(f"the request is {request.state}")


async def approve(
    session: AsyncSession, actor: Actor, request_id: str, now: datetime
) -> EmergencyRequest:
    """A second staff member (not the requester) of the same property approves."""
    request = await _request(session, actor, request_id)
    if request.requested_by == actor.user_id:
        raise errors.Forbidden("the approval must come from another staff member")
    if (
        not actor.is_admin
        and await _staff_membership(session, request.property_id, actor.user_id) is None
    ):
        raise errors.NotFound("Emergency request not found")
    _check_live(request, "pending", now)
    request.state = "approved"
    request.approved_by = actor.user_id
    session.add(request)
    await session.flush()
    await record_event(
        session,
        property_id=request.property_id,
        type="emergency.approved",
        actor=f"user:{actor.user_id}",
        subject=f"emergency_request:{request.id}",
        payload={"request_id": request.id, "requested_by": request.requested_by},
        user_id=request.requested_by,
        occurred_at=now,
    )
    return request


async def collect(
    session: AsyncSession, runtime: Runtime, actor: Actor, request_id: str, now: datetime
) -> tuple[EmergencyRequest, Any]:
    """The requester collects the approved credential, once."""
    request = await _request(session, actor, request_id)
    if request.requested_by != actor.user_id:
        raise errors.NotFound("Emergency request not found")
    if request.state == "pending":
        raise errors.ApprovalRequired("waiting for a second staff member's approval")
    _check_live(request, "approved", now)
    member = await _staff_membership(session, request.property_id, actor.user_id)
    if member is None or not member.can_emergency:
        raise errors.EmergencyNotPermitted("you no longer hold the emergency permission")
    credential = await _issue(session, runtime, request, now)
    return request, credential


async def on_credential_redeemed(
    session: AsyncSession, kiosk: Kiosk, credential: Any, entry: Any, now: datetime
) -> None:
    """REDEMPTION_HOOK: every use of an emergency credential alerts all staff (critical)."""
    data: dict[str, Any] = entry.data if isinstance(entry.data, dict) else {}
    if credential.kind != "emergency" and data.get("emergency") is not True:
        return
    target = data.get("target") if isinstance(data.get("target"), str) else None
    payload: dict[str, Any] = {
        "credential_id": credential.id,
        "kiosk_id": kiosk.id,
        "holder_user_id": credential.user_id,
        "target": target,
        "seq": entry.seq,
    }
    if target and target.startswith("door:"):
        payload["door_id"] = target[5:]
    elif target and target.startswith("compartment:"):
        payload["compartment_id"] = target[12:]
    await record_event(
        session,
        property_id=kiosk.property_id,
        type="emergency.used",
        actor=f"kiosk:{kiosk.id}",
        subject=f"credential:{credential.id}",
        payload=payload,
        occurred_at=entry.occurred_at or now,
        severity="critical",
    )


def _register() -> None:
    journal = _optional("backend.services.journal")
    if journal is not None and on_credential_redeemed not in journal.REDEMPTION_HOOKS:
        journal.REDEMPTION_HOOKS.append(on_credential_redeemed)


_register()
