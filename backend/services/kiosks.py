"""Kiosk enrollment, kiosk authentication and compartments.

A kiosk proves itself with short-lived JWT assertions signed by its own Ed25519 key
(``typ: kiosk-auth+jwt``, ``iss = sub = kiosk id``, ``aud = concierge:kiosk-api``,
``exp - iat <= 60 s``, ``jti`` accepted once). The server stores only the public key, so
nothing on the server lets anyone impersonate a kiosk.
"""

from __future__ import annotations

import functools
import secrets
import time
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.crypto import b64url_decode, sha256_hex
from backend.db import insert_if_absent
from backend.models import Compartment, Kiosk, KioskAssertionUse
from backend.runtime import Runtime
from backend.scoping import get_in_property, staff_property
from backend.services.events import record_event

KIOSK_AUDIENCE = "concierge:kiosk-api"
KIOSK_ASSERTION_TYP = "kiosk-auth+jwt"
SIZES = ("S", "M", "L", "XL")
PURPOSES = ("parcel", "key")
MAX_ASSERTION_BYTES = 2048
# Every kiosk request is authenticated, so its bookkeeping writes are rationed: ``last_seen_at``
# moves at most every LAST_SEEN_RESOLUTION, and spent jtis past their expiry are pruned at most
# every PRUNE_SPENT_SECONDS per process (an expired jti cannot be replayed anyway: exp is checked).
LAST_SEEN_RESOLUTION = timedelta(seconds=30)
PRUNE_SPENT_SECONDS = 60.0
_next_prune = 0.0


def _enrollment_code() -> str:
    # 10 characters from an unambiguous alphabet: easy to type on a kiosk, ~50 bits.
    alphabet = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(10))


async def create_kiosk(
    session: AsyncSession,
    runtime: Runtime,
    actor: Actor,
    property_id: str,
    name: str,
    now: datetime,
) -> tuple[Kiosk, str]:
    await staff_property(session, actor, property_id)
    code = _enrollment_code()
    kiosk = Kiosk(
        property_id=property_id,
        name=name,
        enrollment_code_hash=sha256_hex(code),
        enrollment_expires_at=now + timedelta(seconds=runtime.settings.enrollment_code_ttl_seconds),
    )
    session.add(kiosk)
    await session.flush()
    await record_event(
        session,
        property_id=property_id,
        type="kiosk.created",
        actor=f"user:{actor.user_id}",
        subject=f"kiosk:{kiosk.id}",
        payload={"kiosk_id": kiosk.id, "name": name},
        notify=False,
    )
    return kiosk, code


async def new_enrollment_code(
    session: AsyncSession, runtime: Runtime, actor: Actor, kiosk_id: str, now: datetime
) -> tuple[Kiosk, str]:
    """Re-enrollment (a replaced kiosk computer): a new code; the old key stops working on use."""
    kiosk = await get_in_property(session, actor, Kiosk, kiosk_id)
    code = _enrollment_code()
    kiosk.enrollment_code_hash = sha256_hex(code)
    kiosk.enrollment_expires_at = now + timedelta(
        seconds=runtime.settings.enrollment_code_ttl_seconds
    )
    session.add(kiosk)
    await session.flush()
    return kiosk, code


def parse_public_key(public_key: str) -> Ed25519PublicKey:
    try:
        raw = b64url_decode(public_key)
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise errors.ValidationFailed(
            "public_key must be a base64url Ed25519 public key (32 bytes)"
        ) from None


@functools.lru_cache(maxsize=4096)
def _kiosk_key(public_key: str) -> Ed25519PublicKey:
    """Parsed once per key: every kiosk request is checked against its kiosk's key."""
    return parse_public_key(public_key)


async def enroll(session: AsyncSession, code: str, public_key: str, now: datetime) -> Kiosk:
    """Bind the kiosk's own public key, once, with an unexpired code."""
    parse_public_key(public_key)
    kiosk = (
        await session.exec(
            select(Kiosk)
            .where(Kiosk.enrollment_code_hash == sha256_hex(code.strip().upper()))
            .with_for_update()
        )
    ).first()
    if kiosk is None or kiosk.enrollment_expires_at is None or kiosk.enrollment_expires_at <= now:
        raise errors.InvalidEnrollmentCode()
    if kiosk.public_key is not None:
        # A re-enrollment: the new computer's journal starts at seq 1 (see services/journal.py).
        kiosk.journal_epoch += 1
    kiosk.public_key = public_key
    kiosk.enrollment_code_hash = None
    kiosk.enrollment_expires_at = None
    kiosk.enrolled_at = now
    kiosk.last_seen_at = now
    session.add(kiosk)
    await session.flush()
    await record_event(
        session,
        property_id=kiosk.property_id,
        type="kiosk.enrolled",
        actor=f"kiosk:{kiosk.id}",
        subject=f"kiosk:{kiosk.id}",
        payload={"kiosk_id": kiosk.id, "journal_epoch": kiosk.journal_epoch},
        notify=False,
    )
    return kiosk


async def authenticate_kiosk(
    session: AsyncSession, runtime: Runtime, assertion: str, now: datetime
) -> Kiosk:
    """The kiosk that signed this assertion; every defect is ``invalid_kiosk_assertion``."""
    if len(assertion) > MAX_ASSERTION_BYTES:
        raise errors.InvalidKioskAssertion()
    try:  # read the issuer first: it names the key the signature is checked with below
        unverified_token = jwt.decode_complete(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise errors.InvalidKioskAssertion() from None
    header, unverified = unverified_token["header"], unverified_token["payload"]
    if set(header) - {"alg", "typ", "kid"} or header.get("alg") != "EdDSA":
        raise errors.InvalidKioskAssertion()
    if header.get("typ") != KIOSK_ASSERTION_TYP:
        raise errors.InvalidKioskAssertion()
    kiosk_id = unverified.get("iss")
    if not isinstance(kiosk_id, str) or len(kiosk_id) > 32:
        raise errors.InvalidKioskAssertion()
    kiosk = await session.get(Kiosk, kiosk_id)
    if kiosk is None or kiosk.public_key is None:
        raise errors.InvalidKioskAssertion()
    skew = runtime.settings.clock_skew_seconds
    try:
        claims = jwt.decode(
            assertion,
            _kiosk_key(kiosk.public_key),
            algorithms=["EdDSA"],
            audience=KIOSK_AUDIENCE,
            issuer=kiosk.id,
            leeway=skew,
            options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"], "strict_aud": True},
        )
    except jwt.PyJWTError:
        raise errors.InvalidKioskAssertion() from None
    iat, exp, jti = claims.get("iat"), claims.get("exp"), claims.get("jti")
    if not (isinstance(iat, int) and isinstance(exp, int) and isinstance(jti, str)) or not jti:
        raise errors.InvalidKioskAssertion()
    if claims.get("sub") != kiosk.id or len(jti) > 128:
        raise errors.InvalidKioskAssertion()
    if exp - iat > runtime.settings.kiosk_assertion_max_seconds or iat > now.timestamp() + skew:
        raise errors.InvalidKioskAssertion()
    await _spend_assertion(session, kiosk.id, jti, datetime.fromtimestamp(exp + skew, UTC), now)
    if kiosk.last_seen_at is None or now - kiosk.last_seen_at >= LAST_SEEN_RESOLUTION:
        kiosk.last_seen_at = now
        session.add(kiosk)
    return kiosk


async def _spend_assertion(
    session: AsyncSession, kiosk_id: str, jti: str, expires_at: datetime, now: datetime
) -> None:
    """Record the jti; the unique (kiosk_id, jti) constraint makes a replay fail."""
    global _next_prune
    if time.monotonic() >= _next_prune:
        _next_prune = time.monotonic() + PRUNE_SPENT_SECONDS
        await session.exec(  # type: ignore[call-overload]
            delete(KioskAssertionUse).where(col(KioskAssertionUse.expires_at) < now)
        )
    fresh = await insert_if_absent(
        session, KioskAssertionUse, {"kiosk_id": kiosk_id, "jti": jti, "expires_at": expires_at}
    )
    if not fresh:
        raise errors.KioskAssertionReplayed()


async def create_compartment(
    session: AsyncSession, actor: Actor, kiosk_id: str, label: str, size: str, purpose: str
) -> Compartment:
    await get_in_property(session, actor, Kiosk, kiosk_id)
    if size not in SIZES:
        raise errors.ValidationFailed("size must be S, M, L or XL")
    if purpose not in PURPOSES:
        raise errors.ValidationFailed("purpose must be parcel or key")
    exists = (
        await session.exec(
            select(Compartment).where(Compartment.kiosk_id == kiosk_id, Compartment.label == label)
        )
    ).first()
    if exists is not None:
        raise errors.AlreadyExists(f"compartment {label!r} already exists")
    compartment = Compartment(kiosk_id=kiosk_id, label=label, size=size, purpose=purpose)
    session.add(compartment)
    await session.flush()
    return compartment
