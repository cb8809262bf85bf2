"""Pickup PIN hashes for kiosks, derived in the background soon after each deposit.

Why a background job: the slow hash (scrypt, about 40 ms of CPU) is what a kiosk checks a
typed PIN against while offline, but nobody waits for it at deposit time, and inside the deposit
it sat on the path from the door closing to the resident's phone (and, on SQLite, under the
write lock). The deposit now only draws the PIN's nonce; this job hashes new PINs one at a time
**outside any transaction** (short read, hash on the lowest-priority thread of ``idle_cpu``,
short conditional write), so it never holds a lock while it computes and never takes the CPU from
a request. A kiosk that syncs before the job got to its PIN gets the hash
derived on the spot (``parcel_pins.pin_hashes_for_kiosk``), so sync never misses one.

It runs in servers with background jobs and in ``concierge worker``; across all of those
processes exactly one runs the job at a time (the ``pin_hashes`` job lease,
as for the policy engine); the write only fills rows that still have no hash, so a second
writer could only repeat work, never undo it.

While deposits keep arriving (one less than ``QUIET_SECONDS`` ago) the job holds back, up to
``MAX_DELAY_SECONDS`` per PIN. Even at the lowest priority, scrypt's 16 MiB of memory traffic on
the same cores slowed the requests around it: in the journey benchmark on PostgreSQL at 50
deliveries/s, deposit-to-websocket p99 met 50 ms in 4 of 5 runs with no hashing during the
burst and in 1 of 5 with it. A courier at the bank goes first; the hashes follow seconds later.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from backend import idle_cpu
from backend.models import Parcel
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services import parcels, policy

LEASE_NAME = "pin_hashes"
POLL_SECONDS = 1.0
BATCH = 20


QUIET_SECONDS = 1.0  # a deposit more recent than this: deliveries are under way
MAX_DELAY_SECONDS = 30.0  # how long a PIN's hash is held back at most


def _unhashed() -> tuple[Any, ...]:
    return (
        col(Parcel.state).in_(parcels.WAITING_STATES),
        col(Parcel.pin_nonce).is_not(None),
        col(Parcel.pin_hash).is_(None),
    )


async def derive_pending(
    runtime: Runtime, limit: int = BATCH, deposited_before: datetime | None = None
) -> int:
    """Hash up to ``limit`` PINs that waiting parcels have no hash for yet (only of parcels
    deposited before ``deposited_before``, when given); how many were done."""
    async with runtime.db.session() as session:
        key = parcels.pin_key(session)
        if key is None:
            return 0
        statement = select(Parcel.pin_nonce).where(*_unhashed())
        if deposited_before is not None:
            statement = statement.where(col(Parcel.deposited_at) < deposited_before)
        nonces = (await session.exec(statement.distinct().limit(limit))).all()
    done = 0
    for nonce in nonces:
        if nonce is None:
            continue
        digest = await idle_cpu.run(parcels.hash_pin, parcels.pin_from_nonce(key, nonce))
        async with runtime.db.session() as session:
            await session.exec(  # type: ignore[call-overload]
                update(Parcel)
                .where(col(Parcel.pin_nonce) == nonce, col(Parcel.pin_hash).is_(None))
                .values(pin_hash=digest)
            )
        done += 1
    return done


async def derive_due(
    runtime: Runtime,
    now: datetime,
    *,
    quiet_seconds: float = QUIET_SECONDS,
    max_delay_seconds: float = MAX_DELAY_SECONDS,
) -> int:
    """One round of the job: every pending PIN when deposits have paused, else only those
    held back ``max_delay_seconds`` already; how many were hashed."""
    async with runtime.db.reads() as session:
        recent = (
            await session.exec(
                select(Parcel.id)
                .where(
                    *_unhashed(), col(Parcel.deposited_at) > now - timedelta(seconds=quiet_seconds)
                )
                .limit(1)
            )
        ).first()
    if recent is None:
        return await derive_pending(runtime)
    return await derive_pending(
        runtime, deposited_before=now - timedelta(seconds=max_delay_seconds)
    )


async def _derive_all(runtime: Runtime) -> None:
    while await derive_due(runtime, utcnow()):
        pass


async def run(runtime: Runtime) -> None:
    """Hash new PINs while this process holds the job lease (in a server with background jobs,
    or in ``concierge worker``); runs until cancelled."""
    await policy.run_under_lease(runtime, LEASE_NAME, POLL_SECONDS, lambda: _derive_all(runtime))


async def start_pin_hasher(_app: Any, runtime: Runtime) -> None:
    """STARTUP_HOOK: the background PIN hasher (only when ``settings.background_jobs``)."""
    if runtime.settings.background_jobs:
        runtime.background.append(asyncio.create_task(run(runtime), name="pin-hasher"))
