"""Parcels: courier intake at a kiosk, deposit, pickup (credential or PIN), overflow, return.

Invariants:
- Never two active parcels in one compartment. The database holds it (a partial unique index
  on ``parcel.compartment_id`` over ``assigned``/``deposited``); intake picks the smallest free
  compartment that fits under ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises
  writers with ``BEGIN IMMEDIATE``) and retries in a savepoint if the index still says no.
- A duplicate scan (same tracking at the same kiosk) is the same parcel: ``(kiosk_id, tracking)``
  is unique and intake answers the existing row.
- Only a door that closed on the parcel makes it ``deposited``; only then is the resident told.
- The pickup PIN is never stored: the parcel keeps a random ``pin_nonce`` (the digits are
  HMAC(key derived from the KEK, nonce), so a database dump alone reveals no PIN) and a slow
  hash the kiosk checks offline. All waiting parcels of one unit at one kiosk share one PIN,
  so one PIN opens them together. The PIN never goes into an event (events feed pushes).
- The slow hash is not derived inside the deposit (it costs about 40 ms of CPU, on the path from
  the door closing to the resident's phone): a background job derives it moments later
  (backend/services/pin_hasher.py), and a kiosk that syncs first gets it derived on the spot.
  The server itself checks online PINs against the nonce.

PIN hash scheme (published to kiosks in sync ``pin_hashes``, verifiable with the Python
standard library alone): ``hashlib.scrypt(pin.encode("ascii"), salt=salt, n=16384, r=8, p=1,
dklen=32)`` with a random 16-byte salt per PIN; stored as
``scrypt$16384$8$1$<salt b64url>$<hash b64url>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import weakref
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.crypto import b64url, b64url_decode, derive_key
from backend.db import keep_loaded
from backend.models import (
    Compartment,
    DeliveryHold,
    Event,
    Kiosk,
    Parcel,
    PinAttempt,
    Property,
    Unit,
)
from backend.models.parcel import ACTIVE_STATES
from backend.runtime import Runtime
from backend.scoping import get_in_property, staff_property
from backend.services import policy
from backend.services.events import record_event
from backend.services.properties import policy_of

SIZES = ("S", "M", "L", "XL")
SIZE_RANK = {size: rank for rank, size in enumerate(SIZES)}
# Largest parcel (sorted edges, cm) each size class takes.
SIZE_LIMITS_CM = {"S": (10, 30, 40), "M": (20, 35, 45), "L": (40, 40, 60), "XL": (60, 60, 90)}
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 16384, 8, 1, 32
PIN_DIGITS = 6
KIOSK_BUDGET_FACTOR = 4  # a kiosk's failure budget is this many units' worth
RESERVATION_MINUTES = 15  # an assigned compartment whose door never closed is released after
NEARLY_FULL_RATIO = 0.8
WAITING_STATES = ("deposited",)

# Key that derives PIN digits, per database engine; set at server start (STARTUP_HOOK) and by
# the CLI. Journal handlers get no runtime, so they look it up from their session's engine.
_PIN_KEYS: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def register_runtime(runtime: Runtime) -> None:
    _PIN_KEYS[runtime.db.engine.sync_engine] = derive_key(runtime.kek, "parcel-pin")


async def on_startup(_app: Any, runtime: Runtime) -> None:
    register_runtime(runtime)


def pin_key(session: AsyncSession) -> bytes | None:
    bind: Any = session.bind
    return _PIN_KEYS.get(getattr(bind, "sync_engine", bind))


def pin_from_nonce(key: bytes, nonce: str) -> str:
    digest = hmac.new(key, nonce.encode(), hashlib.sha256).digest()
    return str(int.from_bytes(digest[:8], "big") % 10**PIN_DIGITS).zfill(PIN_DIGITS)


def hash_pin(pin: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        pin.encode("ascii"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_DKLEN
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64url(salt)}${b64url(digest)}"


def check_pin_hash(stored: str, pin: str) -> bool:
    try:
        alg, n, r, p, salt, expected = stored.split("$")
        if alg != "scrypt":
            return False
        digest = hashlib.scrypt(
            pin.encode("ascii"),
            salt=b64url_decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(b64url_decode(expected)),
        )
    except (ValueError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(digest, b64url_decode(expected))


def pickup_pin(session: AsyncSession, parcel: Parcel) -> str | None:
    """The PIN of a waiting parcel (for the resident's and staff's views), else None."""
    key = pin_key(session)
    if parcel.state not in WAITING_STATES or parcel.pin_nonce is None or key is None:
        return None
    return pin_from_nonce(key, parcel.pin_nonce)


def size_for_dimensions(length_cm: float, width_cm: float, height_cm: float) -> str | None:
    edges = sorted((length_cm, width_cm, height_cm))
    for size in SIZES:
        if all(e <= limit for e, limit in zip(edges, SIZE_LIMITS_CM[size], strict=True)):
            return size
    return None


async def find_unit(session: AsyncSession, property_id: str, label: str) -> Unit | None:
    """The unit with that label: exact first, then ignoring case ("4b" is 4B on a parcel)."""
    label = label.strip()
    if not label:
        return None
    rows = (
        await session.exec(
            select(Unit).where(
                Unit.property_id == property_id, func.upper(Unit.label) == label.upper()
            )
        )
    ).all()
    exact = [u for u in rows if u.label == label]
    if exact:
        return exact[0]
    return rows[0] if len(rows) == 1 else None


def _normal_label(label: str) -> str:
    return label.strip().upper()


def _clean_tracking(tracking: str) -> str:
    value = tracking.strip()
    if not value or len(value) > 64 or not value.isprintable():
        raise errors.ValidationFailed("tracking must be 1-64 printable characters")
    return value


def _is_postgres(session: AsyncSession) -> bool:
    bind: Any = session.bind
    return bind is not None and bind.dialect.name == "postgresql"


def _race_guard(session: AsyncSession) -> AbstractAsyncContextManager[Any]:
    """A savepoint around writes that a concurrent transaction can make fail (PostgreSQL), so
    the loser rolls back just those and retries. On SQLite the transaction holds the
    database's write lock from its first statement (``BEGIN IMMEDIATE``): nothing can race
    it, and a savepoint would only cost time on the delivery path."""
    return session.begin_nested() if _is_postgres(session) else nullcontext()


# ---------------------------------------------------------------------------------------------
# Events


async def _labels(session: AsyncSession, parcel: Parcel) -> tuple[str | None, str | None]:
    unit = await session.get(Unit, parcel.unit_id)
    compartment = (
        await session.get(Compartment, parcel.compartment_id) if parcel.compartment_id else None
    )
    keep_loaded(session, unit, compartment)  # the response view reads them again
    return (unit.label if unit else None, compartment.label if compartment else None)


async def _parcel_event(
    session: AsyncSession,
    parcel: Parcel,
    type: str,
    actor: str,
    *,
    notify: bool,
    occurred_at: datetime | None = None,
    residents_see: bool = True,
    **extra: Any,
) -> Event:
    """The custody record of one step: who, when, carrier, tracking, unit, compartment.

    ``residents_see=False`` keeps a step for staff only (the event carries no ``unit_id``):
    the unit is told about a parcel once it is deposited, not while a courier is at the door.
    """
    unit_label, compartment_label = await _labels(session, parcel)
    payload: dict[str, Any] = {
        "parcel_id": parcel.id,
        "kiosk_id": parcel.kiosk_id,
        "compartment_id": parcel.compartment_id,
        "compartment_label": compartment_label,
        "unit_id": parcel.unit_id,
        "unit": unit_label,
        "carrier": parcel.carrier,
        "tracking": parcel.tracking,
        "size": parcel.size,
        "state": parcel.state,
        "actor": actor,
    }
    payload.update(extra)
    return await record_event(
        session,
        property_id=parcel.property_id,
        type=type,
        actor=actor,
        subject=f"parcel:{parcel.id}",
        payload=payload,
        unit_id=parcel.unit_id if residents_see else None,
        occurred_at=occurred_at,
        notify=notify,
    )


async def record_rejection(
    session: AsyncSession, kiosk: Kiosk, reason: str, **payload: Any
) -> None:
    """A kiosk request refused for a reason staff should see (foreign compartment or parcel)."""
    await record_event(
        session,
        property_id=kiosk.property_id,
        type="kiosk.request_rejected",
        actor=f"kiosk:{kiosk.id}",
        subject=f"kiosk:{kiosk.id}",
        payload={"kiosk_id": kiosk.id, "reason": reason, **payload},
        severity="warning",
        notify=False,
    )


# ---------------------------------------------------------------------------------------------
# Intake


async def _free_sizes(session: AsyncSession, kiosk_id: str) -> list[str]:
    rows = (
        await session.exec(
            select(Compartment.size)
            .where(
                Compartment.kiosk_id == kiosk_id,
                Compartment.purpose == "parcel",
                Compartment.state == "free",
            )
            .distinct()
        )
    ).all()
    return sorted(set(rows), key=lambda s: SIZE_RANK.get(s, 99))


async def _pick_compartment(
    session: AsyncSession, kiosk_id: str, size: str, requested: str | None
) -> Compartment | None:
    fitting = [s for s in SIZES if SIZE_RANK[s] >= SIZE_RANK[size]]
    statement = select(Compartment).where(
        Compartment.kiosk_id == kiosk_id,
        Compartment.purpose == "parcel",
        Compartment.state == "free",
        col(Compartment.size).in_(fitting),
    )
    if requested is not None:
        statement = statement.where(Compartment.id == requested)
    statement = statement.order_by(
        case(SIZE_RANK, value=Compartment.size), col(Compartment.label)
    ).limit(1)
    if _is_postgres(session):
        statement = statement.with_for_update(skip_locked=True)
    return (await session.exec(statement)).first()


async def _existing(session: AsyncSession, kiosk_id: str, tracking: str) -> Parcel | None:
    statement = select(Parcel).where(Parcel.kiosk_id == kiosk_id, Parcel.tracking == tracking)
    if _is_postgres(session):
        statement = statement.with_for_update()
    return (await session.exec(statement)).first()


@dataclass
class Intake:
    parcel: Parcel
    compartment: Compartment | None
    created: bool


async def intake(
    session: AsyncSession,
    kiosk: Kiosk,
    *,
    carrier: str,
    tracking: str,
    unit_label: str,
    size: str,
    now: datetime,
    compartment_id: str | None = None,
    to_office: bool = False,
) -> Intake:
    """Reserve the smallest free compartment that fits (or record an office hand-over)."""
    tracking = _clean_tracking(tracking)
    carrier = carrier.strip()
    if not carrier:
        raise errors.ValidationFailed("carrier must not be empty")
    if size not in SIZE_RANK:
        raise errors.ValidationFailed("size must be S, M, L or XL")
    unit = await find_unit(session, kiosk.property_id, unit_label)
    if unit is None:
        raise errors.UnknownUnit(f"no unit {unit_label.strip()!r} at this property")
    if compartment_id is not None:
        await kiosk_compartment(session, kiosk, compartment_id)
    existing = await _existing(session, kiosk.id, tracking)
    if existing is not None and existing.state != "cancelled":
        if existing.unit_id != unit.id:
            raise errors.ParcelStateConflict("this tracking number is already recorded here")
        compartment = (
            await session.get(Compartment, existing.compartment_id)
            if existing.compartment_id and existing.state in ACTIVE_STATES
            else None
        )
        return Intake(existing, compartment, False)
    actor = f"kiosk:{kiosk.id}"
    if to_office:
        parcel = existing or Parcel(
            property_id=kiosk.property_id,
            kiosk_id=kiosk.id,
            unit_id=unit.id,
            carrier=carrier,
            tracking=tracking,
            size=size,
            created_by=actor,
        )
        return Intake(await _to_office(session, parcel, actor, now, intake=True), None, True)
    for _ in range(5):
        compartment = await _pick_compartment(session, kiosk.id, size, compartment_id)
        if compartment is None:
            free = [
                s for s in await _free_sizes(session, kiosk.id) if SIZE_RANK[s] > SIZE_RANK[size]
            ]
            raise errors.NoCompartmentFits(
                f"no free {size} compartment at this kiosk"
                + (f"; free larger sizes: {', '.join(free)}" if free else ""),
                free_sizes=free,
            )
        try:
            async with _race_guard(session):
                compartment.state = "reserved"
                session.add(compartment)
                parcel = existing or Parcel(
                    property_id=kiosk.property_id,
                    kiosk_id=kiosk.id,
                    unit_id=unit.id,
                    carrier=carrier,
                    tracking=tracking,
                    size=size,
                    created_by=actor,
                    created_at=now,
                )
                parcel.unit_id = unit.id
                parcel.carrier = carrier
                parcel.size = size
                parcel.state = "assigned"
                parcel.compartment_id = compartment.id
                parcel.assigned_at = now
                parcel.cancelled_at = None
                session.add(parcel)
                await session.flush()
        except IntegrityError:
            # Another delivery took the compartment, or the same tracking was scanned twice.
            existing = await _existing(session, kiosk.id, tracking)
            if existing is not None and existing.state != "cancelled":
                compartment = (
                    await session.get(Compartment, existing.compartment_id)
                    if existing.compartment_id and existing.state in ACTIVE_STATES
                    else None
                )
                return Intake(existing, compartment, False)
            continue
        await _parcel_event(
            session,
            parcel,
            "parcel.announced",
            actor,
            notify=False,
            occurred_at=now,
            residents_see=False,
        )
        await _warn_if_nearly_full(session, kiosk, compartment.size, now)
        return Intake(parcel, compartment, True)
    raise errors.ServiceUnavailable("compartments are changing too fast; try again")


async def _warn_if_nearly_full(
    session: AsyncSession, kiosk: Kiosk, size: str, now: datetime
) -> None:
    """Early warning for staff when this reservation brings a size class to nearly full."""
    rows = (
        await session.exec(
            select(Compartment.state, func.count())
            .where(
                Compartment.kiosk_id == kiosk.id,
                Compartment.purpose == "parcel",
                Compartment.size == size,
                Compartment.state != "out_of_service",
            )
            .group_by(col(Compartment.state))
        )
    ).all()
    total = sum(int(n) for _, n in rows)
    occupied = sum(int(n) for state, n in rows if state != "free")
    if total == 0:
        return
    crossed = occupied / total >= NEARLY_FULL_RATIO > (occupied - 1) / total
    if crossed:
        await record_event(
            session,
            property_id=kiosk.property_id,
            type="kiosk.nearly_full",
            actor=f"kiosk:{kiosk.id}",
            subject=f"kiosk:{kiosk.id}",
            payload={"kiosk_id": kiosk.id, "size": size, "occupied": occupied, "total": total},
            occurred_at=now,
            severity="warning",
            notify=False,
        )


async def office_intake(
    session: AsyncSession,
    actor: Actor,
    property_id: str,
    *,
    carrier: str,
    tracking: str,
    unit_label: str,
    size: str,
    now: datetime,
) -> Parcel:
    """A delivery handed to the office (the bank was full): recorded as ``overflowed``."""
    await staff_property(session, actor, property_id)
    tracking = _clean_tracking(tracking)
    unit = await find_unit(session, property_id, unit_label)
    if unit is None:
        raise errors.UnknownUnit(f"no unit {unit_label.strip()!r} at this property")
    existing = (
        await session.exec(
            select(Parcel).where(
                Parcel.property_id == property_id,
                col(Parcel.kiosk_id).is_(None),
                Parcel.tracking == tracking,
                Parcel.unit_id == unit.id,
            )
        )
    ).first()
    if existing is not None:
        return existing
    parcel = Parcel(
        property_id=property_id,
        kiosk_id=None,
        unit_id=unit.id,
        carrier=carrier.strip(),
        tracking=tracking,
        size=size,
        created_by=f"user:{actor.user_id}",
        created_at=now,
    )
    return await _to_office(session, parcel, f"user:{actor.user_id}", now, intake=True)


async def _release(session: AsyncSession, compartment_id: str | None) -> None:
    if compartment_id is None:
        return
    statement = select(Compartment).where(Compartment.id == compartment_id)
    if _is_postgres(session):
        statement = statement.with_for_update()
    compartment = (await session.exec(statement)).first()
    if compartment is not None and compartment.state in ("reserved", "occupied"):
        compartment.state = "free"
        session.add(compartment)


async def _to_office(
    session: AsyncSession,
    parcel: Parcel,
    actor: str,
    now: datetime,
    *,
    intake: bool = False,
    location: str = "office",
) -> Parcel:
    was_in = parcel.compartment_id if parcel.state in ACTIVE_STATES else None
    parcel.state = "overflowed"
    parcel.location = location
    parcel.overflowed_at = now
    session.add(parcel)
    await session.flush()
    await _release(session, was_in)
    await _parcel_event(
        session,
        parcel,
        "parcel.overflowed",
        actor,
        notify=True,
        occurred_at=now,
        location=location,
        from_compartment_id=was_in,
        intake=intake,
    )
    return parcel


async def kiosk_parcel(session: AsyncSession, kiosk: Kiosk, parcel_id: str) -> Parcel:
    """The kiosk's own parcel (locked on PostgreSQL); another kiosk's is ``NotFound``.

    Read-only: the kiosk API looks a parcel up with this before changing it, so a refused
    request has written nothing and its rejection can be recorded and committed as it is."""
    statement = select(Parcel).where(Parcel.id == parcel_id)
    if _is_postgres(session):
        statement = statement.with_for_update()
    parcel = (await session.exec(statement)).first()
    if parcel is None or parcel.kiosk_id != kiosk.id:
        raise errors.NotFound("Parcel not found")
    return parcel


async def _assign_pin(session: AsyncSession, parcel: Parcel) -> None:
    """Give a waiting parcel its unit's PIN at this kiosk (shared by the unit's waiting parcels)."""
    if pin_key(session) is None:
        return
    sibling = (
        await session.exec(
            select(Parcel).where(
                Parcel.kiosk_id == parcel.kiosk_id,
                Parcel.unit_id == parcel.unit_id,
                col(Parcel.state).in_(WAITING_STATES),
                col(Parcel.pin_nonce).is_not(None),
                Parcel.id != parcel.id,
            )
        )
    ).first()
    if sibling is not None:
        parcel.pin_nonce, parcel.pin_hash = sibling.pin_nonce, sibling.pin_hash
        return
    parcel.pin_nonce = secrets.token_urlsafe(16)  # the slow hash follows (pin_hasher.py)


async def _derive_pin_hashes(session: AsyncSession, kiosk_id: str) -> None:
    """Give every waiting parcel at the kiosk whose PIN has no slow hash yet its hash (one per
    PIN: the parcels sharing a nonce share the hash). Normally the background job got there
    first and this finds nothing to do."""
    key = pin_key(session)
    if key is None:
        return
    waiting = (
        await session.exec(
            select(Parcel).where(
                Parcel.kiosk_id == kiosk_id,
                col(Parcel.state).in_(WAITING_STATES),
                col(Parcel.pin_nonce).is_not(None),
            )
        )
    ).all()
    known = {p.pin_nonce: p.pin_hash for p in waiting if p.pin_hash is not None}
    for parcel in waiting:
        if parcel.pin_hash is not None or parcel.pin_nonce is None:
            continue
        digest = known.get(parcel.pin_nonce)
        if digest is None:
            digest = await asyncio.to_thread(hash_pin, pin_from_nonce(key, parcel.pin_nonce))
            known[parcel.pin_nonce] = digest
        parcel.pin_hash = digest
        session.add(parcel)
    await session.flush()


async def kiosk_compartment(session: AsyncSession, kiosk: Kiosk, compartment_id: str) -> None:
    """A compartment a courier asked for must be this kiosk's (read-only, like ``kiosk_parcel``)."""
    requested = await session.get(Compartment, compartment_id)
    if requested is None or requested.kiosk_id != kiosk.id:
        raise errors.NotFound("Compartment not found")


async def confirm_deposit(
    session: AsyncSession, kiosk: Kiosk, parcel: Parcel, closed_at: datetime | None, now: datetime
) -> Parcel:
    """The door closed on the kiosk's ``parcel`` (from ``kiosk_parcel``): now it is
    ``deposited`` and the unit is told (idempotent)."""
    if parcel.state == "deposited":
        return parcel
    if parcel.state != "assigned" or parcel.compartment_id is None:
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}")
    when = now if closed_at is None else min(closed_at, now)
    if parcel.assigned_at is not None and when < parcel.assigned_at:
        when = parcel.assigned_at
    # The PIN first: its sibling query would otherwise flush the changes below one by one.
    await _assign_pin(session, parcel)
    with session.no_autoflush:  # the parcel is written once, below
        compartment = await session.get(Compartment, parcel.compartment_id)
    if compartment is not None:
        compartment.state = "occupied"
        session.add(compartment)
    parcel.state = "deposited"
    parcel.deposited_at = when
    session.add(parcel)
    await session.flush()
    await _parcel_event(
        session,
        parcel,
        "parcel.deposited",
        f"kiosk:{kiosk.id}",
        notify=True,
        occurred_at=when,
        deposited_at=when.isoformat(),
        pickup="app credential or the unit's PIN at the kiosk",
    )
    return parcel


async def cancel_delivery(
    session: AsyncSession, kiosk: Kiosk, parcel: Parcel, now: datetime, reason: str
) -> Parcel:
    """The courier gave up or the door never closed on the kiosk's ``parcel`` (from
    ``kiosk_parcel``): the compartment is released."""
    if parcel.state == "cancelled":
        return parcel
    if parcel.state != "assigned":
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}")
    await _cancel(session, parcel, f"kiosk:{kiosk.id}", now, reason)
    return parcel


async def _cancel(
    session: AsyncSession, parcel: Parcel, actor: str, now: datetime, reason: str
) -> None:
    parcel.state = "cancelled"
    parcel.cancelled_at = now
    session.add(parcel)
    await session.flush()
    await _release(session, parcel.compartment_id)
    await _parcel_event(
        session,
        parcel,
        "parcel.cancelled",
        actor,
        notify=False,
        occurred_at=now,
        reason=reason,
        residents_see=False,
    )


# ---------------------------------------------------------------------------------------------
# Pickup


async def _mark_picked_up(
    session: AsyncSession, parcel: Parcel, actor: str, now: datetime, **extra: Any
) -> None:
    await _mark_all_picked_up(session, [parcel], actor, now, **extra)


async def _mark_all_picked_up(
    session: AsyncSession, parcels: list[Parcel], actor: str, now: datetime, **extra: Any
) -> None:
    """Every row change first, then the events: no row lock is taken while holding the event
    append lock (PostgreSQL), so a concurrent staff action on the same rows cannot deadlock."""
    for parcel in parcels:
        compartment_id = parcel.compartment_id
        parcel.state = "picked_up"
        parcel.picked_up_at = now
        session.add(parcel)
        await session.flush()
        await _release(session, compartment_id)
    await session.flush()
    for parcel in parcels:
        await _parcel_event(
            session, parcel, "parcel.picked_up", actor, notify=True, occurred_at=now, **extra
        )


async def pickup_grants(
    session: AsyncSession, actor: Actor, parcel_id: str, now: datetime
) -> list[Any]:
    """Grants for ``POST /v1/credentials {parcel_id}``: the compartments of every waiting parcel
    of the caller's unit at that parcel's kiosk (they open together in one pickup)."""
    from backend.services.grants import Grant

    parcel = await session.get(Parcel, parcel_id)
    if parcel is None or parcel.unit_id not in actor.unit_ids:
        raise errors.NotFound("Parcel not found")
    if parcel.state not in WAITING_STATES or parcel.kiosk_id is None or not parcel.compartment_id:
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}, not waiting in a locker")
    others = (
        await session.exec(
            select(Parcel)
            .where(
                Parcel.kiosk_id == parcel.kiosk_id,
                Parcel.unit_id == parcel.unit_id,
                col(Parcel.state).in_(WAITING_STATES),
                col(Parcel.compartment_id).is_not(None),
                Parcel.id != parcel.id,
            )
            .order_by(col(Parcel.deposited_at))
        )
    ).all()
    return [
        Grant(
            kiosk_id=p.kiosk_id or "",
            target=f"compartment:{p.compartment_id}",
            not_after=None,
            role="resident",
            parcel_id=p.id,
        )
        for p in [parcel, *others]
    ]


async def _on_credential_redeemed(
    session: AsyncSession, kiosk: Kiosk, credential: Any, entry: Any, now: datetime
) -> None:
    """REDEMPTION_HOOK: a parcel credential opened its compartment -> the parcel is picked up."""
    parcel_id = getattr(credential, "parcel_id", None)
    if not parcel_id:
        return
    statement = select(Parcel).where(Parcel.id == parcel_id)
    if _is_postgres(session):
        statement = statement.with_for_update()
    parcel = (await session.exec(statement)).first()
    if parcel is None or parcel.state not in WAITING_STATES or parcel.kiosk_id != kiosk.id:
        return
    if getattr(credential, "target", None) != f"compartment:{parcel.compartment_id}":
        return
    occurred = getattr(entry, "occurred_at", None) or now
    await _mark_picked_up(
        session,
        parcel,
        f"user:{credential.user_id}",
        min(occurred, now),
        channel="credential",
        credential_id=getattr(credential, "id", None),
    )


@dataclass
class PinDecision:
    granted: bool
    reason: str
    compartments: list[dict[str, str]] = field(default_factory=list)
    retry_after_seconds: int | None = None


async def _failures(
    session: AsyncSession, kiosk_id: str, since: datetime, unit_label: str | None
) -> tuple[int, datetime | None]:
    statement = select(func.count(), func.min(PinAttempt.at)).where(
        PinAttempt.kiosk_id == kiosk_id,
        PinAttempt.outcome == "wrong_pin",
        col(PinAttempt.at) >= since,
    )
    if unit_label is not None:
        statement = statement.where(PinAttempt.unit_label == unit_label)
    count, oldest = (await session.exec(statement)).one()
    return int(count or 0), oldest


async def _record_attempt(
    session: AsyncSession,
    kiosk: Kiosk,
    unit: Unit | None,
    unit_label: str,
    outcome: str,
    channel: str,
    at: datetime,
) -> None:
    session.add(
        PinAttempt(
            property_id=kiosk.property_id,
            kiosk_id=kiosk.id,
            unit_id=unit.id if unit else None,
            unit_label=unit_label,
            outcome=outcome,
            channel=channel,
            at=at,
        )
    )
    await session.flush()


async def _pin_failed(
    session: AsyncSession,
    kiosk: Kiosk,
    prop: Property,
    unit: Unit | None,
    unit_label: str,
    reason: str,
    channel: str,
    at: datetime,
) -> None:
    """Journal a failure; alert staff when the kiosk's failures reach its budget (a burst)."""
    rules = policy_of(prop)
    since = at - timedelta(minutes=rules.pin_lockout_minutes)
    await _record_attempt(session, kiosk, unit, unit_label, reason, channel, at)
    unit_failures, _ = await _failures(session, kiosk.id, since, unit_label)
    kiosk_failures, _ = await _failures(session, kiosk.id, since, None)
    payload = {
        "kiosk_id": kiosk.id,
        "unit": unit_label,
        "unit_id": unit.id if unit else None,
        "reason": reason,
        "channel": channel,
        "failures": unit_failures,
    }
    await record_event(
        session,
        property_id=kiosk.property_id,
        type="pin.failed",
        actor=f"kiosk:{kiosk.id}",
        subject=f"kiosk:{kiosk.id}",
        payload=payload,
        occurred_at=at,
        notify=False,
    )
    if reason == "wrong_pin" and unit_failures == rules.pin_max_attempts:
        await record_event(
            session,
            property_id=kiosk.property_id,
            type="pin.locked_out",
            actor=f"kiosk:{kiosk.id}",
            subject=f"kiosk:{kiosk.id}",
            payload={**payload, "minutes": rules.pin_lockout_minutes},
            occurred_at=at,
            severity="warning",
            notify=False,
        )
    if reason == "wrong_pin" and kiosk_failures == rules.pin_max_attempts * KIOSK_BUDGET_FACTOR:
        await record_event(
            session,
            property_id=kiosk.property_id,
            type="pin.burst",
            actor=f"kiosk:{kiosk.id}",
            subject=f"kiosk:{kiosk.id}",
            payload={
                "kiosk_id": kiosk.id,
                "failures": kiosk_failures,
                "minutes": rules.pin_lockout_minutes,
            },
            occurred_at=at,
            notify=True,
        )


async def pin_pickup(
    session: AsyncSession, kiosk: Kiosk, unit_label: str, pin: str, now: datetime
) -> PinDecision:
    """A unit and PIN typed at the kiosk: opens every compartment of that unit's parcels there.

    Failures are budgeted per (kiosk, unit) and per kiosk over ``pin_lockout_minutes``; past
    the budget the answer is ``locked_out`` even for the right PIN until old failures age out.
    """
    prop = await session.get(Property, kiosk.property_id)
    assert prop is not None
    if _is_postgres(session):  # one PIN check at a time per kiosk: budgets are exact
        await session.exec(select(Kiosk.id).where(Kiosk.id == kiosk.id).with_for_update())
    rules = policy_of(prop)
    label = _normal_label(unit_label)
    unit = await find_unit(session, kiosk.property_id, label)
    since = now - timedelta(minutes=rules.pin_lockout_minutes)
    unit_failures, unit_oldest = await _failures(session, kiosk.id, since, label)
    kiosk_failures, kiosk_oldest = await _failures(session, kiosk.id, since, None)
    locked = None
    if unit_failures >= rules.pin_max_attempts:
        locked = unit_oldest
    elif kiosk_failures >= rules.pin_max_attempts * KIOSK_BUDGET_FACTOR:
        locked = kiosk_oldest
    if locked is not None:
        await _pin_failed(session, kiosk, prop, unit, label, "locked_out", "online", now)
        ends = locked + timedelta(minutes=rules.pin_lockout_minutes)
        return PinDecision(False, "locked_out", [], max(1, math.ceil((ends - now).total_seconds())))
    candidates: list[Parcel] = []
    if unit is not None and pin.isdigit() and len(pin) == PIN_DIGITS:
        statement = select(Parcel).where(
            Parcel.kiosk_id == kiosk.id,
            Parcel.unit_id == unit.id,
            col(Parcel.state).in_(WAITING_STATES),
            col(Parcel.pin_nonce).is_not(None),
        )
        if _is_postgres(session):
            statement = statement.with_for_update()
        rows = (await session.exec(statement)).all()
        key = pin_key(session)
        for parcel in rows:
            if key is not None and parcel.pin_nonce is not None:
                ok = hmac.compare_digest(pin_from_nonce(key, parcel.pin_nonce), pin)
            elif parcel.pin_hash is not None:
                ok = await asyncio.to_thread(check_pin_hash, parcel.pin_hash, pin)
            else:
                ok = False
            if ok:
                candidates.append(parcel)
    if not candidates:
        await _pin_failed(session, kiosk, prop, unit, label, "wrong_pin", "online", now)
        return PinDecision(False, "wrong_pin")
    await _record_attempt(session, kiosk, unit, label, "granted", "online", now)
    opened = []
    for parcel in candidates:
        compartment = await session.get(Compartment, parcel.compartment_id or "")
        opened.append(
            {
                "id": parcel.compartment_id or "",
                "label": compartment.label if compartment else "",
                "parcel_id": parcel.id,
            }
        )
    await _mark_all_picked_up(session, candidates, f"kiosk:{kiosk.id}", now, channel="pin")
    return PinDecision(True, "pin_ok", opened)


async def pin_hashes_for_kiosk(
    session: AsyncSession, kiosk: Kiosk, now: datetime
) -> list[dict[str, Any]]:
    """Sync ``pin_hashes``: what the kiosk needs to check a unit + PIN offline."""
    await _derive_pin_hashes(session, kiosk.id)
    rows = (
        await session.exec(
            select(Parcel, Unit.label, Compartment.label)
            .join(Unit, col(Unit.id) == Parcel.unit_id)
            .join(Compartment, col(Compartment.id) == Parcel.compartment_id)
            .where(
                Parcel.kiosk_id == kiosk.id,
                col(Parcel.state).in_(WAITING_STATES),
                col(Parcel.pin_hash).is_not(None),
            )
            .order_by(col(Parcel.id))
        )
    ).all()
    entries = []
    for parcel, unit_label, compartment_label in rows:
        alg, n, r, p, salt, digest = (parcel.pin_hash or "").split("$")
        entries.append(
            {
                "parcel_id": parcel.id,
                "unit": unit_label,
                "unit_id": parcel.unit_id,
                "compartment_id": parcel.compartment_id,
                "compartment_label": compartment_label,
                "alg": alg,
                "n": int(n),
                "r": int(r),
                "p": int(p),
                "salt": salt,
                "hash": digest,
                "pin_hash": parcel.pin_hash,
            }
        )
    return entries


# ---------------------------------------------------------------------------------------------
# Kiosk journal: offline intake and offline PIN pickups


def _entry_data(entry: Any) -> dict[str, Any]:
    data = getattr(entry, "data", None)
    return data if isinstance(data, dict) else {}


def _parse_time(value: Any, default: datetime) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return default
        if parsed.tzinfo is not None:
            return parsed
    return default


async def _conflict(
    session: AsyncSession, kiosk: Kiosk, reason: str, at: datetime, **payload: Any
) -> None:
    await record_event(
        session,
        property_id=kiosk.property_id,
        type="parcel.conflict",
        actor=f"kiosk:{kiosk.id}",
        subject=f"parcel:{payload['parcel_id']}"
        if payload.get("parcel_id")
        else f"kiosk:{kiosk.id}",
        payload={"kiosk_id": kiosk.id, "reason": reason, **payload},
        occurred_at=at,
        notify=True,
    )


async def _ingest_offline_deposit(
    session: AsyncSession, kiosk: Kiosk, entry: Any, now: datetime
) -> None:
    """``parcel.deposited_offline``: the kiosk assigned from its synced free list while offline.

    data: {carrier, tracking, unit, size, compartment_id, closed_at?}. Reconciled here; when
    the server gave that compartment to another parcel meanwhile (or the unit or compartment
    is unknown) the parcel is recorded without a compartment and staff get ``parcel.conflict``.
    """
    data = _entry_data(entry)
    occurred = min(_parse_time(getattr(entry, "occurred_at", None), now), now)
    at = min(_parse_time(data.get("closed_at"), occurred), now)
    carrier = str(data.get("carrier") or "").strip()[:64] or "unknown"
    tracking = str(data.get("tracking") or "").strip()
    size = str(data.get("size") or "")
    unit_label = str(data.get("unit") or "")
    compartment_id = str(data.get("compartment_id") or "")
    base = {"tracking": tracking, "unit": unit_label, "compartment_id": compartment_id}
    if not tracking or len(tracking) > 64 or size not in SIZE_RANK:
        await _conflict(session, kiosk, "invalid_entry", at, **base)
        return
    unit = await find_unit(session, kiosk.property_id, unit_label) if unit_label else None
    if unit is None:
        await _conflict(session, kiosk, "unknown_unit", at, **base)
        return
    statement = select(Compartment).where(Compartment.id == compartment_id)
    if _is_postgres(session):
        statement = statement.with_for_update()
    compartment = (await session.exec(statement)).first() if compartment_id else None
    if compartment is None or compartment.kiosk_id != kiosk.id:
        await _conflict(session, kiosk, "foreign_compartment", at, **base)
        return
    existing = await _existing(session, kiosk.id, tracking)
    if existing is not None and existing.state != "cancelled":
        if existing.state != "assigned":
            return  # already known: a re-uploaded or duplicate entry
        if existing.compartment_id == compartment.id:
            await confirm_deposit(session, kiosk, existing, at, now)
            return
        # Reserved online in one compartment, then deposited offline in another: the parcel is
        # where the kiosk says; the first reservation is released.
        await _release(session, existing.compartment_id)
        existing.compartment_id = None
        session.add(existing)
        await session.flush()
    holder = (
        await session.exec(
            select(Parcel).where(
                Parcel.compartment_id == compartment.id, col(Parcel.state).in_(ACTIVE_STATES)
            )
        )
    ).first()
    parcel = existing or Parcel(
        property_id=kiosk.property_id,
        kiosk_id=kiosk.id,
        unit_id=unit.id,
        carrier=carrier,
        tracking=tracking,
        size=size,
        created_by=f"kiosk:{kiosk.id}",
        created_at=at,
    )
    parcel.unit_id, parcel.carrier, parcel.size, parcel.offline = unit.id, carrier, size, True
    parcel.cancelled_at = None
    if (
        holder is not None
        or compartment.purpose != "parcel"
        or compartment.state == "out_of_service"
    ):
        parcel.state = "announced"
        parcel.compartment_id = None
        parcel.location = f"compartment {compartment.label} (conflict)"
        session.add(parcel)
        await session.flush()
        await _conflict(
            session,
            kiosk,
            "compartment_taken",
            at,
            parcel_id=parcel.id,
            other_parcel_id=holder.id if holder else None,
            unit_id=unit.id,
            **base,
        )
        return
    compartment.state = "occupied"
    session.add(compartment)
    parcel.state = "deposited"
    parcel.compartment_id = compartment.id
    parcel.assigned_at = at
    parcel.deposited_at = at
    await _assign_pin(session, parcel)
    session.add(parcel)
    await session.flush()
    await _parcel_event(
        session,
        parcel,
        "parcel.deposited",
        f"kiosk:{kiosk.id}",
        notify=True,
        occurred_at=at,
        deposited_at=at.isoformat(),
        offline=True,
        pickup="app credential or the unit's PIN at the kiosk",
    )


async def _ingest_pin_pickup(
    session: AsyncSession, kiosk: Kiosk, entry: Any, now: datetime
) -> None:
    """``pin.pickup``: a PIN checked offline. data: {unit, granted, reason, parcel_ids}."""
    data = _entry_data(entry)
    at = min(_parse_time(getattr(entry, "occurred_at", None), now), now)
    label = _normal_label(str(data.get("unit") or ""))[:32]
    unit = await find_unit(session, kiosk.property_id, label) if label else None
    prop = await session.get(Property, kiosk.property_id)
    assert prop is not None
    if not data.get("granted"):
        reason = "locked_out" if data.get("reason") == "locked_out" else "wrong_pin"
        await _pin_failed(session, kiosk, prop, unit, label, reason, "offline", at)
        return
    await _record_attempt(session, kiosk, unit, label, "granted", "offline", at)
    picked: list[Parcel] = []
    ids = list(dict.fromkeys(str(i) for i in (data.get("parcel_ids") or [])[:20]))
    for parcel_id in ids:
        statement = select(Parcel).where(Parcel.id == parcel_id)
        if _is_postgres(session):
            statement = statement.with_for_update()
        parcel = (await session.exec(statement)).first()
        if (
            parcel is None
            or parcel.kiosk_id != kiosk.id
            or unit is None
            or parcel.unit_id != unit.id
            or parcel.state not in WAITING_STATES
        ):
            continue
        picked.append(parcel)
    await _mark_all_picked_up(session, picked, f"kiosk:{kiosk.id}", at, channel="pin_offline")


# ---------------------------------------------------------------------------------------------
# Staff


async def staff_parcel(session: AsyncSession, actor: Actor, parcel_id: str) -> Parcel:
    return await get_in_property(session, actor, Parcel, parcel_id, label="Parcel")


async def _staff_parcel_locked(session: AsyncSession, actor: Actor, parcel_id: str) -> Parcel:
    parcel = await staff_parcel(session, actor, parcel_id)
    if _is_postgres(session):
        await session.refresh(parcel, with_for_update=True)
    return parcel


async def move_to_overflow(
    session: AsyncSession, actor: Actor, parcel_id: str, location: str, now: datetime
) -> Parcel:
    parcel = await _staff_parcel_locked(session, actor, parcel_id)
    if parcel.state == "overflowed":
        return parcel
    if parcel.state not in ("deposited", "assigned", "announced"):
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}")
    return await _to_office(session, parcel, f"user:{actor.user_id}", now, location=location)


async def return_to_carrier(
    session: AsyncSession, actor: Actor, parcel_id: str, reason: str, now: datetime
) -> Parcel:
    parcel = await _staff_parcel_locked(session, actor, parcel_id)
    if parcel.state == "returned":
        return parcel
    if parcel.state not in ("deposited", "assigned", "announced", "overflowed"):
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}")
    was_in = parcel.compartment_id if parcel.state in ACTIVE_STATES else None
    parcel.state = "returned"
    parcel.returned_at = now
    parcel.location = None
    session.add(parcel)
    await session.flush()
    await _release(session, was_in)
    await _parcel_event(
        session,
        parcel,
        "parcel.returned",
        f"user:{actor.user_id}",
        notify=True,
        occurred_at=now,
        reason=reason,
    )
    return parcel


async def hand_over(session: AsyncSession, actor: Actor, parcel_id: str, now: datetime) -> Parcel:
    """Staff handed an office (overflowed) parcel to the resident."""
    parcel = await _staff_parcel_locked(session, actor, parcel_id)
    if parcel.state == "picked_up":
        return parcel
    if parcel.state != "overflowed":
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}, not at the office")
    await _mark_picked_up(session, parcel, f"user:{actor.user_id}", now, channel="office")
    return parcel


async def custody(session: AsyncSession, actor: Actor, parcel_id: str) -> list[Event]:
    parcel = await staff_parcel(session, actor, parcel_id)
    return list(
        (
            await session.exec(
                select(Event)
                .where(
                    Event.property_id == parcel.property_id, Event.subject == f"parcel:{parcel.id}"
                )
                .order_by(col(Event.id))
            )
        ).all()
    )


@dataclass
class Occupancy:
    kiosk_id: str
    size: str
    occupied: int
    total: int
    nearly_full: bool


async def occupancy(session: AsyncSession, property_id: str) -> list[Occupancy]:
    rows = (
        await session.exec(
            select(Compartment.kiosk_id, Compartment.size, Compartment.state, func.count())
            .join(Kiosk, col(Kiosk.id) == Compartment.kiosk_id)
            .where(
                Kiosk.property_id == property_id,
                Compartment.purpose == "parcel",
                Compartment.state != "out_of_service",
            )
            .group_by(col(Compartment.kiosk_id), col(Compartment.size), col(Compartment.state))
        )
    ).all()
    table: dict[tuple[str, str], list[int]] = {}
    for kiosk_id, size, state, count in rows:
        cell = table.setdefault((kiosk_id, size), [0, 0])
        cell[1] += int(count)
        if state != "free":
            cell[0] += int(count)
    result = []
    for (kiosk_id, size), (occupied, total) in sorted(
        table.items(), key=lambda kv: (kv[0][0], SIZE_RANK.get(kv[0][1], 99))
    ):
        nearly = total > 0 and occupied / total >= NEARLY_FULL_RATIO
        result.append(Occupancy(kiosk_id, size, occupied, total, nearly))
    return result


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 1)


async def weekly_report(
    session: AsyncSession, actor: Actor, property_id: str, start: datetime | None, now: datetime
) -> dict[str, Any]:
    """The weekly audit: the seven days up to now, or the week from ``start``."""
    prop = await staff_property(session, actor, property_id)
    rules = policy_of(prop)
    if start is None:
        end = now
        start = now - timedelta(days=7)
    else:
        end = start + timedelta(days=7)

    def between(column: Any) -> Any:
        return (col(column) >= start) & (col(column) < end)

    async def count(*where: Any) -> int:
        value = (
            await session.exec(
                select(func.count())
                .select_from(Parcel)
                .where(Parcel.property_id == property_id, *where)
            )
        ).one()
        return int(value or 0)

    deposits = await count(between(Parcel.deposited_at))
    pickups = list(
        (
            await session.exec(
                select(Parcel).where(
                    Parcel.property_id == property_id,
                    between(Parcel.picked_up_at),
                    col(Parcel.deposited_at).is_not(None),
                )
            )
        ).all()
    )
    minutes = [
        (p.picked_up_at - p.deposited_at).total_seconds() / 60
        for p in pickups
        if p.picked_up_at and p.deposited_at
    ]
    cutoff = end - timedelta(days=rules.reminder_after_days)
    waiting = (
        await session.exec(
            select(Parcel, Unit.label)
            .join(Unit, col(Unit.id) == Parcel.unit_id)
            .where(
                Parcel.property_id == property_id,
                col(Parcel.deposited_at) <= cutoff,
                col(Parcel.deposited_at).is_not(None),
                # still unclaimed at the end of the period
                (col(Parcel.picked_up_at).is_(None)) | (col(Parcel.picked_up_at) >= end),
                (col(Parcel.returned_at).is_(None)) | (col(Parcel.returned_at) >= end),
                col(Parcel.state).in_(("deposited", "overflowed", "picked_up", "returned")),
            )
            .order_by(col(Parcel.deposited_at))
        )
    ).all()
    unclaimed = [
        {
            "parcel_id": p.id,
            "unit": label,
            "days": int((end - p.deposited_at).total_seconds() // 86400) if p.deposited_at else 0,
        }
        for p, label in waiting
    ]
    failed = (
        await session.exec(
            select(func.count())
            .select_from(PinAttempt)
            .where(
                PinAttempt.property_id == property_id,
                col(PinAttempt.outcome) != "granted",
                col(PinAttempt.at) >= start,
                col(PinAttempt.at) < end,
            )
        )
    ).one()
    # Overdue alerts repeat until the key is back: count keys, not alerts.
    keys_overdue = (
        await session.exec(
            select(func.count(func.distinct(Event.subject)))
            .select_from(Event)
            .where(
                Event.property_id == property_id,
                Event.type == "key.overdue",
                col(Event.occurred_at) >= start,
                col(Event.occurred_at) < end,
            )
        )
    ).one()
    return {
        "period": {"start": start, "end": end},
        "deposits": deposits,
        "pickups": len(pickups),
        "unclaimed": unclaimed,
        "occupancy": [
            {"kiosk_id": o.kiosk_id, "size": o.size, "occupied": o.occupied, "total": o.total}
            for o in await occupancy(session, property_id)
        ],
        "pickup_minutes": {"p50": _percentile(minutes, 0.5), "p90": _percentile(minutes, 0.9)},
        "failed_pin_attempts": int(failed or 0),
        "overflow_moves": await count(between(Parcel.overflowed_at)),
        "returns": await count(between(Parcel.returned_at)),
        "keys_overdue": int(keys_overdue or 0),
        "staff_minutes_saved": round(deposits * rules.minutes_per_package, 1),
    }


# ---------------------------------------------------------------------------------------------
# Residents


async def set_hold(
    session: AsyncSession, actor: Actor, until: datetime | None, now: datetime
) -> list[DeliveryHold]:
    """Vacation hold on every unit the caller lives in: reminders pause until ``until``."""
    unit_ids = sorted(actor.unit_ids)
    if not unit_ids:
        raise errors.Forbidden("only residents put deliveries on hold")
    holds = []
    for unit_id in unit_ids:
        unit = await session.get(Unit, unit_id)
        if unit is None:
            continue
        hold = await session.get(DeliveryHold, unit_id)
        if until is None or until <= now:
            if hold is not None:
                await session.delete(hold)
            continue
        if hold is None:
            hold = DeliveryHold(
                unit_id=unit_id, property_id=unit.property_id, until=until, set_by=actor.user_id
            )
        hold.until, hold.set_by = until, actor.user_id
        session.add(hold)
        holds.append(hold)
    await session.flush()
    return holds


async def holds_of(session: AsyncSession, actor: Actor, now: datetime) -> list[DeliveryHold]:
    if not actor.unit_ids:
        return []
    return list(
        (
            await session.exec(
                select(DeliveryHold).where(
                    col(DeliveryHold.unit_id).in_(sorted(actor.unit_ids)),
                    col(DeliveryHold.until) > now,
                )
            )
        ).all()
    )


# ---------------------------------------------------------------------------------------------
# Policy jobs


def _claim(session: AsyncSession, statement: Any) -> Any:
    """Rows a policy job works on: locked, and skipped when another run has them (PostgreSQL);
    two concurrent runs (the server's job and the CLI) never act twice on one parcel."""
    if _is_postgres(session):
        return statement.with_for_update(skip_locked=True)
    return statement


async def _unclaimed_since(
    session: AsyncSession, prop: Property, marker: Any, cutoff: datetime
) -> list[Parcel]:
    """Deposited parcels waiting since ``cutoff`` that a job has not marked yet (``marker`` null)."""
    rows = await session.exec(
        _claim(session, select(Parcel)).where(
            Parcel.property_id == prop.id,
            Parcel.state == "deposited",
            col(marker).is_(None),
            col(Parcel.deposited_at) <= cutoff,
        )
    )
    return list(rows.all())


async def _reminders(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """A second notification after ``reminder_after_days``, never in quiet hours or on hold."""
    rules = policy_of(prop)
    if policy.in_quiet_hours(prop, rules, now):
        return []
    held = set(
        (
            await session.exec(
                select(DeliveryHold.unit_id).where(
                    DeliveryHold.property_id == prop.id, col(DeliveryHold.until) > now
                )
            )
        ).all()
    )
    rows = await _unclaimed_since(
        session, prop, Parcel.reminded_at, now - timedelta(days=rules.reminder_after_days)
    )
    actions = []
    for parcel in rows:
        if parcel.unit_id in held or parcel.deposited_at is None:
            continue
        days = int((now - parcel.deposited_at).total_seconds() // 86400)
        parcel.reminded_at = now
        session.add(parcel)
        await session.flush()
        await _parcel_event(
            session, parcel, "parcel.reminder", "system", notify=True, occurred_at=now, days=days
        )
        actions.append(
            {
                "action": "parcel.reminder",
                "property_id": prop.id,
                "parcel_id": parcel.id,
                "unit_id": parcel.unit_id,
                "days": days,
            }
        )
    return actions


async def _overflow_list(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """Parcels unclaimed ``overflow_after_days`` go on staff's "remove to overflow" list."""
    rules = policy_of(prop)
    rows = await _unclaimed_since(
        session, prop, Parcel.overflow_due_at, now - timedelta(days=rules.overflow_after_days)
    )
    actions = []
    for parcel in rows:
        parcel.overflow_due_at = now
        session.add(parcel)
        await session.flush()
        await _parcel_event(
            session,
            parcel,
            "parcel.overflow_due",
            "system",
            notify=False,
            occurred_at=now,
            residents_see=False,
        )
        actions.append(
            {
                "action": "parcel.overflow_due",
                "property_id": prop.id,
                "parcel_id": parcel.id,
                "unit_id": parcel.unit_id,
            }
        )
    return actions


async def _expire_reservations(
    session: AsyncSession, runtime: Runtime, prop: Property, now: datetime
) -> list[dict[str, Any]]:
    """A door that never closed: the reservation is released after ``RESERVATION_MINUTES``."""
    cutoff = now - timedelta(minutes=RESERVATION_MINUTES)
    rows = (
        await session.exec(
            _claim(session, select(Parcel)).where(
                Parcel.property_id == prop.id,
                Parcel.state == "assigned",
                col(Parcel.assigned_at) <= cutoff,
            )
        )
    ).all()
    actions = []
    for parcel in rows:
        await _cancel(session, parcel, "system", now, "door_never_closed")
        actions.append(
            {"action": "parcel.cancelled", "property_id": prop.id, "parcel_id": parcel.id}
        )
    return actions


def _register() -> None:
    for job in (_expire_reservations, _reminders, _overflow_list):
        if job not in policy.POLICY_JOBS:
            policy.POLICY_JOBS.append(job)
    try:
        from backend.services import journal
    except ImportError:  # the credentials feature is not installed
        return
    journal.JOURNAL_HANDLERS["parcel.deposited_offline"] = _ingest_offline_deposit
    journal.JOURNAL_HANDLERS["pin.pickup"] = _ingest_pin_pickup
    if _on_credential_redeemed not in journal.REDEMPTION_HOOKS:
        journal.REDEMPTION_HOOKS.append(_on_credential_redeemed)


_register()
