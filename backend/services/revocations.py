"""Revocation of credentials, devices and users, and the list kiosks sync.

An entry says what a kiosk must refuse offline: ``credential`` (``id`` = the credential's
``jti``), ``device`` (``id`` = the device's Ed25519 public key, the ``x`` of the credential's
``cnf.jwk``) or ``user`` (``id`` = the user id, the credential's ``sub``). An entry lives until
the last credential it covers has expired (plus the clock skew kiosks tolerate), then drops out
of the list: an expired credential is refused anyway, so the list stays small.

The list's ``version`` is the largest entry id of the property: it grows with every revocation.
Revoking also marks the covered credentials ``revoked_at`` (a redemption reported later by an
offline kiosk is then flagged), and a revoked device can no longer get credentials. A user
revoked at a property gets no new credential there while the entry is in force (kiosks refuse
them anyway).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import Credential, Device, Membership, Revocation
from backend.runtime import Runtime
from backend.services import properties
from backend.services.events import record_event

KINDS = ("credential", "device", "user")


async def _outstanding(
    session: AsyncSession, property_id: str, now: datetime, *conditions: Any
) -> datetime | None:
    """Latest expiry of the unexpired credentials at the property matching ``conditions``."""
    latest: datetime | None = (
        await session.exec(
            select(func.max(Credential.expires_at)).where(
                Credential.property_id == property_id,
                col(Credential.expires_at) > now,
                *conditions,
            )
        )
    ).one()
    return latest


async def _mark_revoked(session: AsyncSession, now: datetime, *conditions: Any) -> int:
    result = await session.exec(  # type: ignore[call-overload]
        update(Credential)
        .where(col(Credential.revoked_at).is_(None), col(Credential.expires_at) > now, *conditions)
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


async def revoke(
    session: AsyncSession,
    *,
    property_id: str,
    kind: str,
    subject_id: str,
    reason: str,
    actor: str,
    now: datetime,
    skew_seconds: int = 30,
) -> Revocation:
    """Revoke at one property; idempotent while an equal entry is in force.

    ``subject_id``: a credential id, a device id or a user id. ``actor``: ``"user:<id>"`` or
    ``"system"``. Marks the covered credentials revoked and records ``credential.revoked``.
    """
    if kind not in KINDS:
        raise errors.ValidationFailed("kind must be credential, device or user")
    skew = timedelta(seconds=skew_seconds)
    holder: str | None
    if kind == "credential":
        credential = await session.get(Credential, subject_id)
        if credential is None or credential.property_id != property_id:
            raise errors.NotFound("Credential not found")
        match, holder = credential.jti, credential.user_id
        conditions: tuple[Any, ...] = (col(Credential.id) == credential.id,)
        latest: datetime | None = credential.expires_at
    elif kind == "device":
        device = await session.get(Device, subject_id)
        if device is None:
            raise errors.NotFound("Device not found")
        match, holder = device.public_key, device.user_id
        conditions = (col(Credential.device_id) == device.id,)
        latest = await _outstanding(session, property_id, now, *conditions)
        if device.revoked_at is None:
            device.revoked_at = now
            device.push_token = None
            session.add(device)
    else:
        match, holder = subject_id, subject_id
        conditions = (col(Credential.user_id) == subject_id,)
        latest = await _outstanding(session, property_id, now, *conditions)
    expires_at = max(latest or now, now) + skew
    existing = (
        await session.exec(
            select(Revocation)
            .where(
                Revocation.property_id == property_id,
                Revocation.kind == kind,
                Revocation.match == match,
                col(Revocation.expires_at) >= expires_at,
            )
            .limit(1)
        )
    ).first()
    revoked = await _mark_revoked(
        session, now, col(Credential.property_id) == property_id, *conditions
    )
    if existing is not None and revoked == 0:
        return existing
    row = Revocation(
        property_id=property_id,
        kind=kind,
        subject_id=subject_id,
        match=match,
        reason=reason,
        actor=actor,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    payload: dict[str, Any] = {"kind": kind, "reason": reason, "revocation_id": str(row.id)}
    payload[f"{kind}_id"] = subject_id
    await record_event(
        session,
        property_id=property_id,
        type="credential.revoked",
        actor=actor,
        subject=f"{kind}:{subject_id}",
        user_id=holder,
        payload=payload,
        notify=False,
    )
    return row


async def revoke_for_staff(
    session: AsyncSession,
    runtime: Runtime,
    actor: Actor,
    *,
    user_id: str | None,
    device_id: str | None,
    credential_id: str | None,
    reason: str,
    now: datetime,
) -> list[Revocation]:
    """``POST /v1/staff/revocations``: at every property the caller manages that it concerns.

    Something outside the caller's properties is ``NotFound``.
    """
    named = [x for x in (user_id, device_id, credential_id) if x is not None]
    if len(named) != 1:
        raise errors.ValidationFailed("give exactly one of user_id, device_id, credential_id")
    skew = runtime.settings.clock_skew_seconds
    who = f"user:{actor.user_id}"

    def manages(property_id: str) -> bool:
        return actor.is_staff_at(property_id)

    if credential_id is not None:
        credential = await session.get(Credential, credential_id)
        if credential is None or not manages(credential.property_id):
            raise errors.NotFound("Credential not found")
        return [
            await revoke(
                session,
                property_id=credential.property_id,
                kind="credential",
                subject_id=credential.id,
                reason=reason,
                actor=who,
                now=now,
                skew_seconds=skew,
            )
        ]
    kind, subject = ("device", device_id) if device_id is not None else ("user", user_id)
    assert subject is not None
    owner = subject
    if kind == "device":
        device = await session.get(Device, subject)
        if device is None:
            raise errors.NotFound("Device not found")
        owner = device.user_id
    member_of = set(
        (
            await session.exec(select(Membership.property_id).where(Membership.user_id == owner))
        ).all()
    )
    holding = set(
        (
            await session.exec(
                select(Credential.property_id).where(
                    Credential.user_id == owner, col(Credential.expires_at) > now
                )
            )
        ).all()
    )
    mine = sorted(p for p in member_of | holding if manages(p))
    if not mine:
        raise errors.NotFound("Device not found" if kind == "device" else "User not found")
    everywhere = mine
    if kind == "device":
        # A lost phone: its credentials are refused at every property that holds some (the
        # caller is only told about its own properties).
        everywhere = sorted(set(mine) | holding)
    rows = [
        await revoke(
            session,
            property_id=property_id,
            kind=kind,
            subject_id=subject,
            reason=reason,
            actor=who,
            now=now,
            skew_seconds=skew,
        )
        for property_id in everywhere
    ]
    return [r for r in rows if manages(r.property_id)]


async def revocation_list(session: AsyncSession, property_id: str, now: datetime) -> dict[str, Any]:
    """``{"version", "entries": [{"kind", "id", "expires_at"}]}`` as kiosks sync it."""
    version = (
        await session.exec(
            select(func.max(Revocation.id)).where(Revocation.property_id == property_id)
        )
    ).one()
    rows = (
        await session.exec(
            select(Revocation)
            .where(Revocation.property_id == property_id, col(Revocation.expires_at) > now)
            .order_by(col(Revocation.id))
        )
    ).all()
    entries: dict[tuple[str, str], Revocation] = {}
    for row in rows:
        key = (row.kind, row.match)
        if key not in entries or entries[key].expires_at < row.expires_at:
            entries[key] = row
    return {
        "version": int(version or 0),
        "entries": [
            {"kind": r.kind, "id": r.match, "expires_at": r.expires_at.isoformat()}
            for r in entries.values()
        ],
    }


async def _on_member_removed(
    session: AsyncSession, property_id: str, user_id: str, now: datetime
) -> None:
    await revoke(
        session,
        property_id=property_id,
        kind="user",
        subject_id=user_id,
        reason="member removed",
        actor="system",
        now=now,
    )


properties.ON_MEMBER_REMOVED.append(_on_member_removed)
