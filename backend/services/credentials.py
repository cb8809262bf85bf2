"""Issuing one-time phone credentials (the format is defined by ``kiosk.credential``).

A credential names one kiosk (``aud``), one target on it (``tgt``), the holder (``sub``) and the
holder's device key (``cnf.jwk``): a screenshot on another phone is useless, and a kiosk spends
each ``jti`` once. Validity: ``settings.credential_ttl_seconds`` for on-site use, or for an
offline batch (``count``, at most ``settings.max_offline_credentials`` per target)
``settings.offline_credential_ttl_seconds``; never beyond the grant's ``not_after``.

Every credential is recorded (jti, user, device, kiosk, target, validity, signing key) for
audit and revocation; the token itself is not stored.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.db import keep_loaded
from backend.models import Credential, Device, Kiosk, Revocation
from backend.models.base import new_id
from backend.runtime import Runtime
from backend.services.grants import Grant
from backend.services.signing_keys import signing_key
from kiosk.credential import CRED_TYP, EMERGENCY_TYP, device_jwk, sign_credential


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _usable(device: Device | None, user_id: str) -> Device:
    if device is None or device.user_id != user_id or device.revoked_at is not None:
        raise errors.NotFound("Device not found")
    return device


async def _device(session: AsyncSession, user_id: str, device_id: str) -> Device:
    return _usable(await session.get(Device, device_id), user_id)


async def _device_unless_revoked(
    session: AsyncSession, user_id: str, device_id: str, property_ids: set[str], now: datetime
) -> Device:
    """The caller's own, unrevoked device, provided the caller's access is not revoked at any of
    ``property_ids`` (a user revoked at a property gets nothing there while the revocation is in
    force). One query for both: issuance is the hottest write of the phone API."""
    revoked = (
        select(Revocation.id)
        .where(
            Revocation.kind == "user",
            Revocation.match == user_id,
            col(Revocation.property_id).in_(property_ids),
            col(Revocation.expires_at) > now,
        )
        .exists()
    )
    row = (await session.exec(select(Device, revoked).where(Device.id == device_id))).first()
    device = _usable(row[0] if row is not None else None, user_id)
    if row is not None and row[1]:
        raise errors.AccessRevoked("Access to this property was revoked")
    return device


def _claims(
    runtime: Runtime,
    *,
    jti: str,
    user_id: str,
    aud: str,
    target: str,
    role: str,
    device: Device,
    now: datetime,
    expires_at: datetime,
) -> dict[str, Any]:
    return {
        "iss": runtime.settings.issuer,
        "sub": user_id,
        "aud": aud,
        "jti": jti,
        "iat": _epoch(now),
        "nbf": _epoch(now),
        "exp": _epoch(expires_at),
        "tgt": target,
        "role": role,
        "cnf": {"jwk": device_jwk(device.public_key)},
    }


def _with_token(row: Credential, token: str) -> Credential:
    object.__setattr__(row, "token", token)
    return row


async def issue_for_grants(
    session: AsyncSession,
    runtime: Runtime,
    *,
    user_id: str,
    device_id: str,
    grants: Sequence[Grant],
    count: int | None = None,
    now: datetime,
    offline: bool | None = None,
) -> list[Credential]:
    """Sign and record credentials for ``grants``; each returned row carries ``.token``.

    ``count`` None: one on-site credential per grant (short validity). ``count`` N: an offline
    batch of N per grant (longer validity); ``offline`` overrides which validity applies
    (default: offline when ``count`` is given and greater than one).
    """
    settings = runtime.settings
    if not grants:
        raise errors.NotFound("Nothing to open")
    if count is not None and not 1 <= count <= settings.max_offline_credentials:
        raise errors.ValidationFailed(
            f"count must be between 1 and {settings.max_offline_credentials}"
        )
    if offline is None:
        offline = count is not None and count > 1
    per_grant = count or 1
    kiosks: dict[str, Kiosk] = {}
    for grant in grants:
        kiosk = kiosks.get(grant.kiosk_id) or await session.get(Kiosk, grant.kiosk_id)
        if kiosk is None:
            raise errors.NotFound("Kiosk not found")
        kiosks[kiosk.id] = kiosk
    device = await _device_unless_revoked(
        session, user_id, device_id, {k.property_id for k in kiosks.values()}, now
    )
    keep_loaded(session, *kiosks.values())  # the response names each kiosk's public key
    ttl = settings.offline_credential_ttl_seconds if offline else settings.credential_ttl_seconds
    now = now.astimezone(UTC).replace(microsecond=0)
    key = await signing_key(session, runtime, "credential", now)
    issued: list[Credential] = []
    for grant in grants:
        expires_at = now + timedelta(seconds=ttl)
        if grant.not_after is not None:
            expires_at = min(expires_at, grant.not_after.astimezone(UTC).replace(microsecond=0))
        if expires_at <= now:
            raise errors.Conflict("The access window has ended")
        kiosk = kiosks[grant.kiosk_id]
        for _ in range(per_grant):
            jti = new_id()
            claims = _claims(
                runtime,
                jti=jti,
                user_id=user_id,
                aud=kiosk.id,
                target=grant.target,
                role=grant.role,
                device=device,
                now=now,
                expires_at=expires_at,
            )
            row = Credential(
                id=jti,
                jti=jti,
                kid=key.kid,
                user_id=user_id,
                device_id=device.id,
                kiosk_id=kiosk.id,
                property_id=kiosk.property_id,
                target=grant.target,
                role=grant.role,
                kind="standard",
                parcel_id=grant.parcel_id,
                work_order_id=grant.work_order_id,
                key_id=grant.key_id,
                issued_at=now,
                not_before=now,
                expires_at=expires_at,
            )
            session.add(row)
            issued.append(_with_token(row, sign_credential(key.private_key, key.kid, claims)))
    await session.flush()
    return issued


async def issue_emergency(
    session: AsyncSession,
    runtime: Runtime,
    *,
    user_id: str,
    device_id: str,
    property_id: str,
    now: datetime,
    not_after: datetime | None = None,
    ttl_seconds: int | None = None,
    work_order_id: str | None = None,
) -> Credential:
    """One emergency credential (any door or compartment of the property), signed by the
    emergency-purpose key. Who may get one (and approval) is the caller's rule; the row
    carries ``.token``."""
    device = await _device_unless_revoked(session, user_id, device_id, {property_id}, now)
    now = now.astimezone(UTC).replace(microsecond=0)
    expires_at = now + timedelta(seconds=ttl_seconds or runtime.settings.credential_ttl_seconds)
    if not_after is not None:
        expires_at = min(expires_at, not_after.astimezone(UTC).replace(microsecond=0))
    if expires_at <= now:
        raise errors.Conflict("The access window has ended")
    key = await signing_key(session, runtime, "emergency", now)
    jti = new_id()
    claims = _claims(
        runtime,
        jti=jti,
        user_id=user_id,
        aud=f"property:{property_id}",
        target="any",
        role="staff",
        device=device,
        now=now,
        expires_at=expires_at,
    )
    row = Credential(
        id=jti,
        jti=jti,
        kid=key.kid,
        user_id=user_id,
        device_id=device.id,
        kiosk_id=None,
        property_id=property_id,
        target="any",
        role="staff",
        kind="emergency",
        work_order_id=work_order_id,
        issued_at=now,
        not_before=now,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    token = sign_credential(key.private_key, key.kid, claims, typ=EMERGENCY_TYP)
    return _with_token(row, token)


def _feature(module: str) -> Any | None:
    """A feature service module (parcels, work orders) if it is installed in this tree."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


async def grants_for_request(
    session: AsyncSession,
    actor: Any,
    *,
    parcel_id: str | None,
    door_id: str | None,
    work_order_id: str | None,
    target: str | None,
    now: datetime,
) -> list[Grant]:
    """Resolve what the request asks to open into grants (exactly one of the three ids)."""
    from backend.services.grants import door_grants

    named = [x for x in (parcel_id, door_id, work_order_id) if x is not None]
    if len(named) != 1:
        raise errors.ValidationFailed("give exactly one of parcel_id, door_id, work_order_id")
    grants: list[Grant]
    if door_id is not None:
        grants = await door_grants(session, actor, door_id, now)
    elif parcel_id is not None:
        parcels = _feature("backend.services.parcels")
        if parcels is None or not hasattr(parcels, "pickup_grants"):
            raise errors.NotFound("Parcel not found")
        grants = list(await parcels.pickup_grants(session, actor, parcel_id, now))
    else:
        work_orders = _feature("backend.services.work_orders")
        if work_orders is None or not hasattr(work_orders, "visit_grants"):
            raise errors.NotFound("Work order not found")
        return list(await work_orders.visit_grants(session, actor, work_order_id, target, now))
    if target is not None:
        grants = [g for g in grants if g.target == target]
        if not grants:
            raise errors.NotFound("Target not found")
    return grants


__all__ = ["CRED_TYP", "EMERGENCY_TYP", "grants_for_request", "issue_emergency", "issue_for_grants"]
