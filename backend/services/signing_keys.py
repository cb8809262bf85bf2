"""Credential-signing keys: creation, rotation on a schedule, publication as a JWKS.

Lifecycle of a key (per purpose, ``credential`` or ``emergency``)::

    next  --rotate-->  active  --rotate-->  retiring  --(last credential expired)-->  retired

- There is always one ``active`` key (it signs) and one ``next`` key (published, not signing).
  Kiosks learn ``next`` at their sync long before it signs, so a kiosk that has been offline
  since the previous rotation still verifies the first credentials of the new key.
- ``rotate`` promotes ``next`` to ``active``, turns the old active key into ``retiring`` and
  creates a fresh ``next``. A retiring key stays published until ``publish_until``: the expiry
  of the last credential it signed, plus the clock skew kiosks tolerate. Then it is retired and
  its sealed private key is wiped.
- Rotation happens when the active key is ``settings.signing_key_rotation_days`` old
  (checked at startup, on issuance and at kiosk sync), or on demand (``concierge keys rotate``).
- Private keys exist in the database only sealed with the key-encryption key; they are never
  logged and never leave this module except as an in-memory key object used to sign.

Concurrency: a partial unique index allows one active and one next key per purpose, so two
processes racing to create or rotate cannot both win. On PostgreSQL issuance reads the active key
``FOR SHARE`` and rotation updates it, so ``publish_until`` is computed only after every
transaction that was still signing with the old key has committed its credentials.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.crypto import b64url, seal, unseal
from backend.models import Credential, SigningKey
from backend.runtime import Runtime

log = logging.getLogger("concierge.keys")

PURPOSES = ("credential", "emergency")
PUBLISHED = ("active", "next", "retiring")
# How often a process re-checks the rotation schedule (it is also checked on demand).
CHECK_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True)
class ActiveKey:
    """What issuance needs to sign: never serialised, never logged."""

    kid: str
    purpose: str
    private_key: Ed25519PrivateKey

    def __repr__(self) -> str:  # keep the key object out of any log or traceback
        return f"ActiveKey(kid={self.kid!r}, purpose={self.purpose!r})"


def _context(kid: str) -> str:
    return f"signing-key:{kid}"


def _new_key(runtime: Runtime, purpose: str, now: datetime, status: str) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    prefix = "e" if purpose == "emergency" else "k"
    kid = f"{prefix}{now:%Y%m%d}-{secrets.token_hex(4)}"
    return SigningKey(
        kid=kid,
        purpose=purpose,
        status=status,
        public_key=b64url(raw_public),
        private_key_sealed=seal(runtime.kek, raw_private, context=_context(kid)),
        created_at=now,
        activated_at=now if status == "active" else None,
    )


def _private_key(runtime: Runtime, key: SigningKey) -> Ed25519PrivateKey:
    cache: dict[str, Ed25519PrivateKey] = runtime.extensions.setdefault("signing_key_cache", {})
    cached = cache.get(key.kid)
    if cached is not None:
        return cached
    if key.private_key_sealed is None:
        raise errors.ServiceUnavailable("signing key unavailable")
    try:
        raw = unseal(runtime.kek, key.private_key_sealed, context=_context(key.kid))
    except InvalidTag:
        # Another key-encryption key sealed it: this process is misconfigured.
        log.error(
            "signing key cannot be unsealed: wrong key-encryption key", extra={"kid": key.kid}
        )
        raise errors.ServiceUnavailable("signing key unavailable") from None
    private = Ed25519PrivateKey.from_private_bytes(raw)
    cache[key.kid] = private
    return private


async def _keys(session: AsyncSession, purpose: str, *statuses: str) -> list[SigningKey]:
    rows = await session.exec(
        select(SigningKey)
        .where(SigningKey.purpose == purpose, col(SigningKey.status).in_(statuses))
        .order_by(col(SigningKey.created_at))
        .execution_options(populate_existing=True)
    )
    return list(rows.all())


async def _insert(session: AsyncSession, key: SigningKey) -> bool:
    """Insert in a savepoint; False when another process created that slot first."""
    try:
        async with session.begin_nested():
            session.add(key)
        return True
    except IntegrityError:
        return False


async def ensure_keys(
    session: AsyncSession, runtime: Runtime, purpose: str, now: datetime
) -> list[str]:
    """Create the active and next keys of ``purpose`` if missing; returns what was created.

    The very first key of a purpose becomes active at once: no kiosk can hold a credential
    signed by a previous key, so there is nothing to overlap with.
    """
    created = []
    current = {k.status for k in await _keys(session, purpose, "active", "next")}
    for status in ("active", "next"):
        if status not in current:
            key = _new_key(runtime, purpose, now, status)
            if await _insert(session, key):
                created.append(f"{status}:{key.kid}")
                log.info("signing key created", extra={"kid": key.kid, "status": status})
    return created


def _lead(runtime: Runtime) -> timedelta:
    """How long a next key must have been published before it may sign."""
    period = timedelta(days=runtime.settings.signing_key_rotation_days)
    return min(timedelta(days=1), period / 2)


KEY_MAINTENANCE_LOCK = 0x4B657973  # advisory lock key ("Keys")


async def _lock(session: AsyncSession) -> None:
    """Serialise key maintenance across processes (SQLite: every writer is serialised anyway)."""
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.exec(  # type: ignore[call-overload]
            text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=KEY_MAINTENANCE_LOCK)
        )


async def rotate(
    session: AsyncSession, runtime: Runtime, purpose: str, now: datetime
) -> dict[str, Any]:
    """Promote next -> active, active -> retiring, create a new next. Returns a summary."""
    if purpose not in PURPOSES:
        raise errors.ValidationFailed("purpose must be credential or emergency")
    await _lock(session)
    if not await kek_matches(session, runtime):
        raise errors.ServiceUnavailable("the key-encryption key does not open the signing keys")
    await ensure_keys(session, runtime, purpose, now)
    by_status = {k.status: k for k in await _keys(session, purpose, "active", "next")}
    old, new = by_status["active"], by_status["next"]
    # Updating the active row first waits (PostgreSQL) for issuers holding it FOR SHARE, so the
    # expiry computed below includes every credential the old key signed.
    old.status = "retiring"
    old.retired_at = now
    session.add(old)
    await session.flush()
    last_expiry = (
        await session.exec(select(func.max(Credential.expires_at)).where(Credential.kid == old.kid))
    ).one()
    skew = timedelta(seconds=runtime.settings.clock_skew_seconds)
    old.publish_until = max(last_expiry or now, now) + skew
    old.private_key_sealed = None
    session.add(old)
    new.status = "active"
    new.activated_at = now
    session.add(new)
    await session.flush()
    fresh = _new_key(runtime, purpose, now, "next")
    session.add(fresh)
    await session.flush()
    runtime.extensions.setdefault("signing_key_cache", {}).pop(old.kid, None)
    log.info(
        "signing key rotated",
        extra={"purpose": purpose, "active": new.kid, "next": fresh.kid, "retiring": old.kid},
    )
    return {
        "purpose": purpose,
        "active": new.kid,
        "next": fresh.kid,
        "retiring": old.kid,
        "retiring_published_until": old.publish_until.isoformat(),
        "promoted_key_published_for_seconds": int((now - new.created_at).total_seconds()),
    }


async def retire_expired(session: AsyncSession, runtime: Runtime, now: datetime) -> list[str]:
    """Retiring keys whose last credential has expired stop being published."""
    rows = await session.exec(
        select(SigningKey).where(
            SigningKey.status == "retiring", col(SigningKey.publish_until) <= now
        )
    )
    retired = []
    for key in rows.all():
        key.status = "retired"
        key.private_key_sealed = None
        session.add(key)
        retired.append(key.kid)
    if retired:
        await session.flush()
    return retired


async def _due(session: AsyncSession, runtime: Runtime, purpose: str, now: datetime) -> bool:
    by_status = {k.status: k for k in await _keys(session, purpose, "active", "next")}
    active, upcoming = by_status.get("active"), by_status.get("next")
    if active is None or upcoming is None:
        return False
    period = timedelta(days=runtime.settings.signing_key_rotation_days)
    started = active.activated_at or active.created_at
    return now - started >= period and now - upcoming.created_at >= _lead(runtime)


async def kek_matches(session: AsyncSession, runtime: Runtime) -> bool:
    """Whether this process's key-encryption key opens the stored keys (True when none exist)."""
    key = (
        await session.exec(
            select(SigningKey)
            .where(col(SigningKey.private_key_sealed).is_not(None))
            .order_by(col(SigningKey.created_at).desc())
            .limit(1)
        )
    ).first()
    if key is None:
        return True
    try:
        _private_key(runtime, key)
    except errors.ServiceUnavailable:
        return False
    return True


async def maintain(
    session: AsyncSession, runtime: Runtime, now: datetime, *, force: bool = False
) -> list[dict[str, Any]]:
    """Ensure keys exist, rotate the ones that are due, retire expired ones.

    Cheap when nothing is due: at most once per ``CHECK_INTERVAL`` per process unless forced.
    """
    last = runtime.extensions.get("signing_key_checked_at")
    if not force and last is not None and now - last < CHECK_INTERVAL:
        return []
    actions: list[dict[str, Any]] = []
    if not await kek_matches(session, runtime):
        # A misconfigured process must not create or rotate keys others cannot unseal.
        log.error("signing keys not maintained: the key-encryption key does not match")
        return []
    for purpose in PURPOSES:
        for created in await ensure_keys(session, runtime, purpose, now):
            actions.append({"action": "created", "purpose": purpose, "key": created})
        if await _due(session, runtime, purpose, now):
            await _lock(session)
            # Re-read under the lock: another process may have rotated meanwhile.
            if await _due(session, runtime, purpose, now):
                summary = await rotate(session, runtime, purpose, now)
                actions.append({"action": "rotated", **summary})
    for kid in await retire_expired(session, runtime, now):
        actions.append({"action": "retired", "kid": kid})
    runtime.extensions["signing_key_checked_at"] = now
    return actions


async def signing_key(
    session: AsyncSession, runtime: Runtime, purpose: str, now: datetime
) -> ActiveKey:
    """The key that signs now (rotating first when the schedule says so)."""
    await maintain(session, runtime, now)
    statement = select(SigningKey).where(
        SigningKey.purpose == purpose, SigningKey.status == "active"
    )
    key = (await session.exec(statement.with_for_update(read=True))).first()
    if key is None:
        await ensure_keys(session, runtime, purpose, now)
        key = (await session.exec(statement.with_for_update(read=True))).first()
    if key is None:
        raise errors.ServiceUnavailable("no signing key")
    return ActiveKey(key.kid, purpose, _private_key(runtime, key))


def jwk_of(key: SigningKey) -> dict[str, str]:
    """The public JWK of a signing key, with its status and purpose."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": key.public_key,
        "kid": key.kid,
        "alg": "EdDSA",
        "use": "sig",
        "status": key.status,
        "purpose": key.purpose,
    }


_ORDER = {"active": 0, "next": 1, "retiring": 2}


async def published_keys(session: AsyncSession, now: datetime) -> list[SigningKey]:
    rows = (
        await session.exec(select(SigningKey).where(col(SigningKey.status).in_(PUBLISHED)))
    ).all()
    keys = [
        k
        for k in rows
        if k.status != "retiring" or (k.publish_until is not None and k.publish_until > now)
    ]
    keys.sort(key=lambda k: (k.purpose != "credential", _ORDER[k.status], k.created_at))
    return keys


async def jwks(session: AsyncSession, runtime: Runtime, now: datetime) -> dict[str, Any]:
    """``{"keys": [...]}``: active, next and retiring keys of both purposes (public parts only)."""
    await maintain(session, runtime, now)
    return {"keys": [jwk_of(k) for k in await published_keys(session, now)]}
