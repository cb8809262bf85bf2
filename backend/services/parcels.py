"""Parcels: courier intake at a kiosk, deposit, the PIN and pickup, the office hand-over.

The rest of the parcel domain builds on this module: ``parcel_pins`` (the PIN typed at the
kiosk, failure budgets, hashes for offline checks), ``parcel_journal`` (what a kiosk decided
offline), ``parcel_staff`` (overflow moves, returns, custody, occupancy, the weekly report) and
``parcel_policy`` (holds, reminders, the overflow list, expired reservations).

Invariants:
- Never two active parcels in one compartment. The database holds it (a partial unique index
  on ``parcel.compartment_id`` over ``assigned``/``deposited``); intake picks the smallest free
  compartment that fits under ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and retries in a
  savepoint if the index still says no (SQLite serialises writers with ``BEGIN IMMEDIATE``, so
  nothing races the intake there).
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
import secrets
import weakref
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.crypto import b64url, b64url_decode, derive_key
from backend.db import keep_loaded
from backend.models import (
    Compartment,
    Event,
    Kiosk,
    Parcel,
    Unit,
)
from backend.models.parcel import ACTIVE_STATES
from backend.runtime import Runtime
from backend.scoping import staff_property
from backend.services.events import record_event

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


def normal_label(label: str) -> str:
    return label.strip().upper()


def _clean_tracking(tracking: str) -> str:
    value = tracking.strip()
    if not value or len(value) > 64 or not value.isprintable():
        raise errors.ValidationFailed("tracking must be 1-64 printable characters")
    return value


def is_postgres(session: AsyncSession) -> bool:
    bind: Any = session.bind
    return bind is not None and bind.dialect.name == "postgresql"


def _race_guard(session: AsyncSession) -> AbstractAsyncContextManager[Any]:
    """A savepoint around writes that a concurrent transaction can make fail (PostgreSQL), so
    the loser rolls back just those and retries. On SQLite the transaction holds the
    database's write lock from its first statement (``BEGIN IMMEDIATE``): nothing can race
    it, and a savepoint would only cost time on the delivery path."""
    return session.begin_nested() if is_postgres(session) else nullcontext()


# ---------------------------------------------------------------------------------------------
# Events


async def _labels(session: AsyncSession, parcel: Parcel) -> tuple[str | None, str | None]:
    unit = await session.get(Unit, parcel.unit_id)
    compartment = (
        await session.get(Compartment, parcel.compartment_id) if parcel.compartment_id else None
    )
    keep_loaded(session, unit, compartment)  # the response view reads them again
    return (unit.label if unit else None, compartment.label if compartment else None)


async def parcel_event(
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


@dataclass
class Pick:
    """A free compartment that fits, and how full its size class was before this parcel."""

    compartment: Compartment
    occupied: int  # reserved or occupied, out-of-service ones left out
    total: int  # in service


def _size_class_counts() -> tuple[Any, Any]:
    """Occupied and in-service counts of the outer compartment's size class at its kiosk,
    as correlated subqueries: the nearly-full warning needs them, and asking in the same
    query as the pick spares a round trip inside the write transaction."""
    other = aliased(Compartment)
    same_class = (
        col(other.kiosk_id) == col(Compartment.kiosk_id),
        col(other.purpose) == "parcel",
        col(other.size) == col(Compartment.size),
        col(other.state) != "out_of_service",
    )
    total = select(func.count()).where(*same_class).correlate(Compartment).scalar_subquery()
    occupied = (
        select(func.count())
        .where(*same_class, col(other.state) != "free")
        .correlate(Compartment)
        .scalar_subquery()
    )
    return occupied, total


async def _pick_compartment(
    session: AsyncSession, kiosk_id: str, size: str, requested: str | None
) -> Pick | None:
    fitting = [s for s in SIZES if SIZE_RANK[s] >= SIZE_RANK[size]]
    occupied, total = _size_class_counts()
    statement = select(Compartment, occupied, total).where(
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
    if is_postgres(session):
        statement = statement.with_for_update(of=Compartment, skip_locked=True)
    row = (await session.exec(statement)).first()
    return None if row is None else Pick(row[0], int(row[1]), int(row[2]))


INTAKE_LOCK_CLASS = 0x5363616E  # advisory lock class ("Scan"); the object is the tracking's hash


async def _serialise_scan(session: AsyncSession, kiosk_id: str, tracking: str) -> None:
    """PostgreSQL: one intake at a time per (kiosk, tracking), until commit.

    A kiosk that retries a scan while the first request is still running sends the same
    parcel twice at once. Without this the second cannot see the first's parcel (not yet
    committed) and, its compartment locked, looks for another, or answers that none fits.
    Behind the lock it finds the committed parcel and answers it. (SQLite's write lock already
    serialises every intake.)"""
    if is_postgres(session):
        await session.exec(
            text("SELECT pg_advisory_xact_lock(:class, hashtext(:key))").bindparams(  # type: ignore[call-overload]
                **{"class": INTAKE_LOCK_CLASS, "key": f"{kiosk_id}:{tracking}"}
            )
        )


async def existing_parcel(session: AsyncSession, kiosk_id: str, tracking: str) -> Parcel | None:
    statement = select(Parcel).where(Parcel.kiosk_id == kiosk_id, Parcel.tracking == tracking)
    if is_postgres(session):
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
    await _serialise_scan(session, kiosk.id, tracking)
    existing = await existing_parcel(session, kiosk.id, tracking)
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
        return Intake(await hand_to_office(session, parcel, actor, now, intake=True), None, True)
    for _ in range(5):
        pick = await _pick_compartment(session, kiosk.id, size, compartment_id)
        if pick is None:
            free = [
                s for s in await _free_sizes(session, kiosk.id) if SIZE_RANK[s] > SIZE_RANK[size]
            ]
            raise errors.NoCompartmentFits(
                f"no free {size} compartment at this kiosk"
                + (f"; free larger sizes: {', '.join(free)}" if free else ""),
                free_sizes=free,
            )
        compartment = pick.compartment
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
            if not is_postgres(session):
                # Cannot happen under SQLite's write lock; if it ever does, the transaction
                # (no savepoint there) is spoiled: the kiosk retries (503) and finds the parcel.
                raise errors.ServiceUnavailable("the delivery raced another; try again") from None
            existing = await existing_parcel(session, kiosk.id, tracking)
            if existing is not None and existing.state != "cancelled":
                compartment = (
                    await session.get(Compartment, existing.compartment_id)
                    if existing.compartment_id and existing.state in ACTIVE_STATES
                    else None
                )
                return Intake(existing, compartment, False)
            continue
        await parcel_event(
            session,
            parcel,
            "parcel.announced",
            actor,
            notify=False,
            occurred_at=now,
            residents_see=False,
        )
        await _warn_if_nearly_full(
            session, kiosk, compartment.size, pick.occupied + 1, pick.total, now
        )
        return Intake(parcel, compartment, True)
    raise errors.ServiceUnavailable("compartments are changing too fast; try again")


async def _warn_if_nearly_full(
    session: AsyncSession, kiosk: Kiosk, size: str, occupied: int, total: int, now: datetime
) -> None:
    """Early warning for staff when this reservation (counted in ``occupied``) brings a size
    class to nearly full."""
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
    return await hand_to_office(session, parcel, f"user:{actor.user_id}", now, intake=True)


async def release_compartment(session: AsyncSession, compartment_id: str | None) -> None:
    if compartment_id is None:
        return
    statement = select(Compartment).where(Compartment.id == compartment_id)
    if is_postgres(session):
        # Locked, and read afresh even if the request loaded it before taking the lock.
        statement = statement.with_for_update().execution_options(populate_existing=True)
    compartment = (await session.exec(statement)).first()
    if compartment is not None and compartment.state in ("reserved", "occupied"):
        compartment.state = "free"
        session.add(compartment)


async def hand_to_office(
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
    await release_compartment(session, was_in)
    await parcel_event(
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
    request has written nothing and its rejection can be recorded and committed as it is.

    Its compartment and unit come in the same query and stay loaded: the step that follows
    (deposit, cancel) and its custody event read both, and would otherwise ask for each."""
    statement = (
        select(Parcel, Compartment, Unit)
        .outerjoin(Compartment, col(Compartment.id) == Parcel.compartment_id)
        .outerjoin(Unit, col(Unit.id) == Parcel.unit_id)
        .where(Parcel.id == parcel_id)
    )
    if is_postgres(session):
        statement = statement.with_for_update(of=Parcel)  # (the joined rows stay unlocked)
    row = (await session.exec(statement)).first()
    if row is None or row[0].kiosk_id != kiosk.id:
        raise errors.NotFound("Parcel not found")
    parcel, compartment, unit = row
    keep_loaded(session, compartment, unit)
    return parcel


async def assign_pin(session: AsyncSession, parcel: Parcel) -> None:
    """Give a waiting parcel its unit's PIN at this kiosk (shared by the unit's waiting parcels)."""
    if pin_key(session) is None:
        return
    sibling = (
        await session.exec(
            select(Parcel)
            .where(
                Parcel.kiosk_id == parcel.kiosk_id,
                Parcel.unit_id == parcel.unit_id,
                col(Parcel.state).in_(WAITING_STATES),
                col(Parcel.pin_nonce).is_not(None),
                Parcel.id != parcel.id,
            )
            .limit(1)
        )
    ).first()
    if sibling is not None:
        parcel.pin_nonce, parcel.pin_hash = sibling.pin_nonce, sibling.pin_hash
        return
    parcel.pin_nonce = secrets.token_urlsafe(16)  # the slow hash follows (pin_hasher.py)


SYNC_DERIVE_LIMIT = 8  # slow hashes a kiosk's sync derives itself, at most (about 0.4 s)


async def derive_pin_hashes(
    session: AsyncSession, kiosk_id: str, limit: int = SYNC_DERIVE_LIMIT
) -> None:
    """Give waiting parcels at the kiosk whose PIN has no slow hash yet their hash (one per
    PIN: the parcels sharing a nonce share the hash), for at most ``limit`` PINs, oldest
    deposit first. Normally the background job got there first and this finds nothing to do;
    the limit keeps a sync during a burst (when the job holds back) from spending seconds of
    CPU inside its transaction. The rest follow with the job or the next sync."""
    key = pin_key(session)
    if key is None:
        return
    waiting = (
        await session.exec(
            select(Parcel)
            .where(
                Parcel.kiosk_id == kiosk_id,
                col(Parcel.state).in_(WAITING_STATES),
                col(Parcel.pin_nonce).is_not(None),
            )
            .order_by(col(Parcel.deposited_at))
        )
    ).all()
    known = {p.pin_nonce: p.pin_hash for p in waiting if p.pin_hash is not None}
    derived = 0
    for parcel in waiting:
        if parcel.pin_hash is not None or parcel.pin_nonce is None:
            continue
        digest = known.get(parcel.pin_nonce)
        if digest is None:
            if derived == limit:
                continue  # (a later parcel may still share a PIN derived above)
            digest = await asyncio.to_thread(hash_pin, pin_from_nonce(key, parcel.pin_nonce))
            known[parcel.pin_nonce] = digest
            derived += 1
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
    compartment = await session.get(Compartment, parcel.compartment_id)
    await mark_deposited(session, kiosk, parcel, compartment, when)
    return parcel


async def mark_deposited(
    session: AsyncSession,
    kiosk: Kiosk,
    parcel: Parcel,
    compartment: Compartment | None,
    when: datetime,
    *,
    offline: bool = False,
) -> None:
    """The door closed on ``parcel`` in ``compartment`` (online, or from the kiosk's journal):
    the parcel waits there with its unit's PIN, and the unit is told."""
    # The PIN first: its sibling query would otherwise flush the changes below one by one.
    await assign_pin(session, parcel)
    if compartment is not None:
        compartment.state = "occupied"
        session.add(compartment)
    parcel.state = "deposited"
    parcel.deposited_at = when
    session.add(parcel)
    await session.flush()
    await parcel_event(
        session,
        parcel,
        "parcel.deposited",
        f"kiosk:{kiosk.id}",
        notify=True,
        occurred_at=when,
        deposited_at=when.isoformat(),
        pickup="app credential or the unit's PIN at the kiosk",
        **({"offline": True} if offline else {}),
    )


async def cancel_delivery(
    session: AsyncSession, kiosk: Kiosk, parcel: Parcel, now: datetime, reason: str
) -> Parcel:
    """The courier gave up or the door never closed on the kiosk's ``parcel`` (from
    ``kiosk_parcel``): the compartment is released."""
    if parcel.state == "cancelled":
        return parcel
    if parcel.state != "assigned":
        raise errors.ParcelStateConflict(f"the parcel is {parcel.state}")
    await cancel_parcel(session, parcel, f"kiosk:{kiosk.id}", now, reason)
    return parcel


async def cancel_parcel(
    session: AsyncSession, parcel: Parcel, actor: str, now: datetime, reason: str
) -> None:
    parcel.state = "cancelled"
    parcel.cancelled_at = now
    session.add(parcel)
    await session.flush()
    await release_compartment(session, parcel.compartment_id)
    await parcel_event(
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


async def mark_picked_up(
    session: AsyncSession, parcel: Parcel, actor: str, now: datetime, **extra: Any
) -> None:
    await mark_all_picked_up(session, [parcel], actor, now, **extra)


async def mark_all_picked_up(
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
        await release_compartment(session, compartment_id)
    await session.flush()
    for parcel in parcels:
        await parcel_event(
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


async def on_credential_redeemed(
    session: AsyncSession, kiosk: Kiosk, credential: Any, entry: Any, now: datetime
) -> None:
    """REDEMPTION_HOOK: a parcel credential opened its compartment -> the parcel is picked up."""
    parcel_id = getattr(credential, "parcel_id", None)
    if not parcel_id:
        return
    statement = select(Parcel).where(Parcel.id == parcel_id)
    if is_postgres(session):
        statement = statement.with_for_update()
    parcel = (await session.exec(statement)).first()
    if parcel is None or parcel.state not in WAITING_STATES or parcel.kiosk_id != kiosk.id:
        return
    if getattr(credential, "target", None) != f"compartment:{parcel.compartment_id}":
        return
    occurred = getattr(entry, "occurred_at", None) or now
    await mark_picked_up(
        session,
        parcel,
        f"user:{credential.user_id}",
        min(occurred, now),
        channel="credential",
        credential_id=getattr(credential, "id", None),
    )
