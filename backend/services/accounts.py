"""Accounts: password login with throttling, rotating refresh tokens, invitations, devices.

Refresh tokens rotate on every use; each belongs to a family (one login). Presenting a link
that was already used means it was stolen or replayed, so the whole family is revoked.
Only SHA-256 hashes of refresh tokens and invitation codes are stored.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, update
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor, issue_access_token
from backend.crypto import b64url_decode, sha256_hex
from backend.models import Device, Invitation, LoginFailure, Membership, RefreshToken, Unit, User
from backend.models.base import new_id
from backend.runtime import Runtime
from backend.services.events import record_event

PLATFORMS = ("ios", "android", "web")
# A fixed hash to verify against for unknown emails, so timing does not reveal who has an account.
_DUMMY_PASSWORD = "not-a-real-password"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


async def hash_password(runtime: Runtime, password: str) -> str:
    return await asyncio.to_thread(runtime.hasher.hash, password)


async def _password_matches(runtime: Runtime, stored: str, password: str) -> bool:
    try:
        return await asyncio.to_thread(runtime.hasher.verify, stored, password)
    except (VerificationError, InvalidHashError):
        return False


async def _new_refresh(
    session: AsyncSession, runtime: Runtime, user_id: str, family_id: str, now: datetime
) -> TokenPair:
    secret = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            family_id=family_id,
            user_id=user_id,
            token_hash=sha256_hex(secret),
            expires_at=now + timedelta(seconds=runtime.settings.refresh_token_ttl_seconds),
        )
    )
    await session.flush()
    access = issue_access_token(runtime, user_id, family_id, now)
    return TokenPair(access, secret, runtime.settings.access_token_ttl_seconds)


async def _check_throttle(
    session: AsyncSession, runtime: Runtime, email: str, address: str, now: datetime
) -> None:
    settings = runtime.settings
    since = now - timedelta(seconds=settings.login_window_seconds)
    for column, value in ((LoginFailure.email, email), (LoginFailure.address, address)):
        count = (
            await session.exec(
                select(func.count()).where(column == value, col(LoginFailure.at) >= since)
            )
        ).one()
        if count >= settings.login_max_failures:
            raise errors.TooManyAttempts(
                "Too many failed logins; try again later", retry_after=settings.login_window_seconds
            )


async def login(
    session: AsyncSession, runtime: Runtime, email: str, password: str, address: str, now: datetime
) -> TokenPair:
    """Tokens for a correct password; 429 past the failure budget even for the right password.

    On ``InvalidCredentials`` the caller records the failure (``record_login_failure``) and
    commits it before answering, so the throttle survives the error response.
    """
    email = email.strip().lower()
    await _check_throttle(session, runtime, email, address, now)
    user = (await session.exec(select(User).where(User.email == email))).first()
    stored = (
        user.password_hash
        if user
        else runtime.extensions.setdefault("dummy_hash", runtime.hasher.hash(_DUMMY_PASSWORD))
    )
    ok = await _password_matches(runtime, stored, password)
    if user is None or not ok or not user.is_active:
        raise errors.InvalidCredentials()
    return await _new_refresh(session, runtime, user.id, new_id(), now)


async def record_login_failure(
    session: AsyncSession, email: str, address: str, now: datetime
) -> None:
    session.add(LoginFailure(email=email.strip().lower(), address=address, at=now))
    await session.flush()


async def refresh(session: AsyncSession, runtime: Runtime, token: str, now: datetime) -> TokenPair:
    """Rotate: the presented link is spent, a new one issued; a spent link revokes its family."""
    row = (
        await session.exec(
            select(RefreshToken)
            .where(RefreshToken.token_hash == sha256_hex(token))
            .with_for_update()
        )
    ).first()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise errors.InvalidRefreshToken()
    if row.used_at is not None:
        await revoke_family(session, row.family_id, now)
        raise errors.RefreshTokenReused()
    user = await session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise errors.InvalidRefreshToken()
    # Conditional update: of two concurrent uses of one link, exactly one wins.
    result = await session.exec(  # type: ignore[call-overload]
        update(RefreshToken)
        .where(col(RefreshToken.id) == row.id, col(RefreshToken.used_at).is_(None))
        .values(used_at=now)
    )
    if result.rowcount != 1:
        await revoke_family(session, row.family_id, now)
        raise errors.RefreshTokenReused()
    return await _new_refresh(session, runtime, row.user_id, row.family_id, now)


async def revoke_family(session: AsyncSession, family_id: str, now: datetime) -> None:
    await session.exec(  # type: ignore[call-overload]
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )


async def logout(session: AsyncSession, token: str, now: datetime) -> None:
    row = (
        await session.exec(select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(token)))
    ).first()
    if row is None:
        raise errors.InvalidRefreshToken()
    await revoke_family(session, row.family_id, now)


async def revoke_user_sessions(session: AsyncSession, user_id: str, now: datetime) -> None:
    await session.exec(  # type: ignore[call-overload]
        update(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )


async def create_invitation(
    session: AsyncSession,
    runtime: Runtime,
    actor: Actor,
    property_id: str,
    *,
    email: str,
    role: str,
    unit_id: str | None,
    company: str | None,
    now: datetime,
) -> tuple[Invitation, str]:
    """A one-time code for a new member; the code is returned once and only its hash is kept."""
    if role not in ("resident", "vendor", "courier", "staff"):
        raise errors.ValidationFailed("role must be resident, vendor, courier or staff")
    if role == "resident":
        if unit_id is None:
            raise errors.ValidationFailed("a resident invitation needs unit_id")
        unit = await session.get(Unit, unit_id)
        if unit is None or unit.property_id != property_id:
            raise errors.NotFound("Unit not found")
    elif unit_id is not None:
        raise errors.ValidationFailed("only residents have a unit_id")
    if role == "vendor" and not (company or "").strip():
        raise errors.ValidationFailed("a vendor invitation needs company")
    code = secrets.token_urlsafe(18)
    invitation = Invitation(
        property_id=property_id,
        email=email.strip().lower(),
        role=role,
        unit_id=unit_id,
        company=company if role == "vendor" else None,
        code_hash=sha256_hex(code),
        invited_by=actor.user_id,
        expires_at=now + timedelta(seconds=runtime.settings.invitation_ttl_seconds),
    )
    session.add(invitation)
    await session.flush()
    await record_event(
        session,
        property_id=property_id,
        type="member.invited",
        actor=f"user:{actor.user_id}",
        subject=f"invitation:{invitation.id}",
        payload={"role": role, "unit_id": unit_id, "company": invitation.company},
        notify=False,
    )
    return invitation, code


async def accept_invitation(
    session: AsyncSession, runtime: Runtime, code: str, password: str, name: str, now: datetime
) -> TokenPair:
    """Join: creates the user (or adds the role to an existing account with that email)."""
    invitation = (
        await session.exec(
            select(Invitation).where(Invitation.code_hash == sha256_hex(code)).with_for_update()
        )
    ).first()
    if invitation is None or invitation.expires_at <= now:
        raise errors.InvalidInvitation()
    if invitation.accepted_at is not None:
        raise errors.InvitationUsed()
    user = (await session.exec(select(User).where(User.email == invitation.email))).first()
    if user is None:
        user = User(
            email=invitation.email, name=name, password_hash=await hash_password(runtime, password)
        )
        session.add(user)
        await session.flush()
    elif not await _password_matches(runtime, user.password_hash, password):
        # An existing account proves itself with its current password.
        raise errors.InvalidCredentials()
    existing = (
        await session.exec(
            select(Membership).where(
                Membership.user_id == user.id,
                Membership.property_id == invitation.property_id,
                Membership.role == invitation.role,
            )
        )
    ).first()
    if existing is None:
        session.add(
            Membership(
                user_id=user.id,
                property_id=invitation.property_id,
                role=invitation.role,
                unit_id=invitation.unit_id,
                company=invitation.company,
            )
        )
    invitation.accepted_at = now
    session.add(invitation)
    await session.flush()
    await record_event(
        session,
        property_id=invitation.property_id,
        type="member.joined",
        actor=f"user:{user.id}",
        subject=f"user:{user.id}",
        unit_id=invitation.unit_id,
        payload={"role": invitation.role, "unit_id": invitation.unit_id, "user_id": user.id},
        notify=False,
    )
    return await _new_refresh(session, runtime, user.id, new_id(), now)


def _check_public_key(public_key: str) -> None:
    try:
        raw = b64url_decode(public_key)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise errors.ValidationFailed(
            "public_key must be a base64url Ed25519 public key (32 bytes)"
        )


async def register_device(
    session: AsyncSession, actor: Actor, platform: str, public_key: str, push_token: str | None
) -> Device:
    if platform not in PLATFORMS:
        raise errors.ValidationFailed("platform must be ios, android or web")
    _check_public_key(public_key)
    device = Device(
        user_id=actor.user_id, platform=platform, public_key=public_key, push_token=push_token
    )
    session.add(device)
    await session.flush()
    return device


async def own_device(session: AsyncSession, actor: Actor, device_id: str) -> Device:
    """The caller's active device; someone else's device is simply not found."""
    device = await session.get(Device, device_id)
    if device is None or device.user_id != actor.user_id or device.revoked_at is not None:
        raise errors.NotFound("Device not found")
    return device


async def update_device_push_token(
    session: AsyncSession, actor: Actor, device_id: str, push_token: str | None
) -> Device:
    device = await own_device(session, actor, device_id)
    device.push_token = push_token
    device.push_token_disabled_at = None
    session.add(device)
    await session.flush()
    return device


async def remove_device(session: AsyncSession, actor: Actor, device_id: str, now: datetime) -> None:
    device = await own_device(session, actor, device_id)
    device.revoked_at = now
    device.push_token = None
    session.add(device)
    await session.flush()


async def create_admin(
    session: AsyncSession, runtime: Runtime, email: str, password: str, name: str
) -> User:
    email = email.strip().lower()
    user = (await session.exec(select(User).where(User.email == email))).first()
    password_hash = await hash_password(runtime, password)
    if user is None:
        user = User(email=email, name=name, password_hash=password_hash, is_admin=True)
    else:
        user.is_admin = True
        user.password_hash = password_hash
    session.add(user)
    await session.flush()
    return user


async def active_devices(session: AsyncSession, user_ids: list[str]) -> list[Device]:
    rows = await session.exec(
        select(Device).where(
            col(Device.user_id).in_(user_ids),
            col(Device.revoked_at).is_(None),
            or_(col(Device.push_token_disabled_at).is_(None), col(Device.push_token).is_(None)),
        )
    )
    return list(rows.all())
