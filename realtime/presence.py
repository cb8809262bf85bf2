"""Kiosk presence that outlives the process holding the kiosk's channel.

Presence events (``kiosk.online`` / ``kiosk.offline``) used to be recorded only by the process
holding the kiosk's socket, so a process that died (SIGKILL, OOM, host lost) left its kiosks
"online" for ever, and without Redis no other process knew which kiosks were connected at all.

The database now holds a lease per connected kiosk (``kiosk_presence``, backend/models/presence.py):

- **claim** on connect: upsert the row with this process's id and ``lease_until = now + lease``;
  a reconnect to another process takes the row over. The claim commits *before* ``kiosk.online``
  is recorded, which the sweeper's race analysis below relies on.
- **renew** every ``lease / 3`` seconds: one UPDATE for every kiosk this process holds. A row that
  vanished while the socket stayed open (a sweeper judged this process dead during a long
  database outage) is put back and ``kiosk.online`` recorded again.
- **release** on disconnect: the row is *expired* (``lease_until = now``), not deleted, and only
  while it is still ours. It then counts as "not connected" at once, and if this process dies
  before its own grace timer fires, any process's sweeper still records the ``kiosk.offline``.
- **sweep** in every server process (and ``concierge worker``): a row whose lease ran out more than
  ``kiosk_offline_grace_seconds`` ago belongs to a kiosk nobody holds: record ``kiosk.offline``
  and delete the row, in one transaction under the event append lock, re-checking the row there.
  A kiosk that reconnected meanwhile has a fresh lease and is left alone; two sweepers never
  record the same transition twice (the last presence event is read under the same lock).

A process's clock writes ``lease_until`` and another's reads it: clocks must agree to well within
the grace period (NTP). Every transaction here is short and never spans a network wait (on SQLite
each one holds the write lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import Event, KioskPresence
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services.events import record_event, serialise_appends

log = logging.getLogger("concierge.realtime.presence")

PRESENCE_TYPES = ("kiosk.online", "kiosk.offline")
SWEEP_BATCH = 200
IN_CHUNK = 1000  # ids per IN (...) list: far below SQLite's and asyncpg's parameter limits


def lease_duration(runtime: Runtime) -> timedelta:
    return timedelta(seconds=runtime.settings.kiosk_presence_lease_seconds)


def renew_interval(runtime: Runtime) -> float:
    """Renew (and sweep) three times per lease: two missed rounds still keep the lease."""
    return max(runtime.settings.kiosk_presence_lease_seconds / 3, 0.05)


# -- presence events -----------------------------------------------------------------------


async def _last_presence(session: AsyncSession, kiosk_id: str, property_id: str) -> str | None:
    last: str | None = (
        await session.exec(
            select(Event.type)
            .where(
                Event.property_id == property_id,
                Event.subject == f"kiosk:{kiosk_id}",
                col(Event.type).in_(PRESENCE_TYPES),
            )
            .order_by(col(Event.id).desc())
            .limit(1)
        )
    ).first()
    return last


async def _record(session: AsyncSession, kiosk_id: str, property_id: str, online: bool) -> bool:
    """Append the transition unless it is already the kiosk's last presence (caller holds the
    append lock, so the check and the append cannot interleave with another recorder)."""
    wanted = "kiosk.online" if online else "kiosk.offline"
    last = await _last_presence(session, kiosk_id, property_id)
    if last == wanted or (last is None and not online):
        return False
    await record_event(
        session,
        property_id=property_id,
        type=wanted,
        actor=f"kiosk:{kiosk_id}",
        subject=f"kiosk:{kiosk_id}",
        payload={"kiosk_id": kiosk_id},
    )
    return True


async def record_presence(runtime: Runtime, kiosk_id: str, property_id: str, online: bool) -> bool:
    """Record kiosk.online / kiosk.offline unless it is already the kiosk's last presence."""
    async with runtime.db.session() as session:
        await serialise_appends(session)
        return await _record(session, kiosk_id, property_id, online)


async def settle_offline(
    runtime: Runtime, kiosk_id: str, property_id: str, expired_before: datetime
) -> bool:
    """Record ``kiosk.offline`` unless a lease still counts, and drop the lapsed lease.

    A lease counts when ``lease_until >= expired_before`` (the sweeper passes now - grace, the
    holder's own grace timer passes now). Checked under the append lock: a process that claimed
    the kiosk meanwhile records its ``kiosk.online`` after us, never before.
    """
    async with runtime.db.session() as session:
        await serialise_appends(session)
        lease = await session.get(KioskPresence, kiosk_id)
        if lease is not None and lease.lease_until >= expired_before:
            return False
        recorded = await _record(session, kiosk_id, property_id, online=False)
        await session.exec(
            delete(KioskPresence).where(
                col(KioskPresence.kiosk_id) == kiosk_id,
                col(KioskPresence.lease_until) < expired_before,
            )  # type: ignore[call-overload]
        )
        return recorded


# -- the holder's side ---------------------------------------------------------------------


def _insert(session: AsyncSession, values: dict[str, Any]) -> Any:
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(KioskPresence.__table__).values(**values)  # type: ignore[attr-defined]
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(KioskPresence.__table__).values(**values)  # type: ignore[attr-defined]


async def claim(
    runtime: Runtime, kiosk_id: str, property_id: str, process_id: str, now: datetime
) -> None:
    """This process holds the kiosk's channel now (taking the row over from any other)."""
    values = {
        "kiosk_id": kiosk_id,
        "property_id": property_id,
        "process_id": process_id,
        "connected_at": now,
        "lease_until": now + lease_duration(runtime),
    }
    async with runtime.db.session() as session:
        statement = _insert(session, values)
        statement = statement.on_conflict_do_update(
            index_elements=["kiosk_id"],
            set_={key: value for key, value in values.items() if key != "kiosk_id"},
        )
        await session.exec(statement)


async def release(runtime: Runtime, kiosk_id: str, process_id: str, now: datetime) -> None:
    """The channel closed: expire our lease now (kept for the sweeper), unless another took it."""
    async with runtime.db.session() as session:
        await session.exec(
            update(KioskPresence)
            .where(
                col(KioskPresence.kiosk_id) == kiosk_id,
                col(KioskPresence.process_id) == process_id,
                col(KioskPresence.lease_until) > now,
            )
            .values(lease_until=now)  # type: ignore[call-overload]
        )


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start : start + IN_CHUNK]


async def renew(
    runtime: Runtime, process_id: str, kiosks: Mapping[str, str], now: datetime
) -> list[str]:
    """Extend the leases of the kiosks this process holds (``{kiosk_id: property_id}``).

    One UPDATE (per thousand kiosks). When fewer rows matched than kiosks are held, rows that
    are missing altogether are put back (a row another process holds is left to it); returns
    the kiosk ids put back, whose ``kiosk.online`` the caller records again.
    """
    ids = sorted(kiosks)
    if not ids:
        return []
    until = now + lease_duration(runtime)
    async with runtime.db.session() as session:
        renewed = 0
        for chunk in _chunks(ids):
            result = await session.exec(
                update(KioskPresence)
                .where(
                    col(KioskPresence.process_id) == process_id,
                    col(KioskPresence.kiosk_id).in_(chunk),
                )
                .values(lease_until=until)  # type: ignore[call-overload]
            )
            renewed += int(getattr(result, "rowcount", 0) or 0)
        if renewed >= len(ids):
            return []
        present: set[str] = set()
        for chunk in _chunks(ids):
            rows = await session.exec(
                select(KioskPresence.kiosk_id).where(col(KioskPresence.kiosk_id).in_(chunk))
            )
            present.update(rows.all())
        missing = [kiosk_id for kiosk_id in ids if kiosk_id not in present]
        for kiosk_id in missing:
            values = {
                "kiosk_id": kiosk_id,
                "property_id": kiosks[kiosk_id],
                "process_id": process_id,
                "connected_at": now,
                "lease_until": until,
            }
            await session.exec(_insert(session, values).on_conflict_do_nothing())
    if missing:
        log.warning("kiosk presence leases restored for %d kiosk(s)", len(missing))
    return missing


async def holder(runtime: Runtime, kiosk_id: str, now: datetime) -> str | None:
    """The process id holding an unexpired lease on the kiosk, if any."""
    async with runtime.db.session() as session:
        process_id: str | None = (
            await session.exec(
                select(KioskPresence.process_id).where(
                    col(KioskPresence.kiosk_id) == kiosk_id,
                    col(KioskPresence.lease_until) > now,
                )
            )
        ).first()
        return process_id


# -- the sweeper ---------------------------------------------------------------------------


async def sweep(runtime: Runtime, now: datetime | None = None) -> int:
    """Record ``kiosk.offline`` for leases lapsed longer than the grace period; the count."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=runtime.settings.kiosk_offline_grace_seconds)
    async with runtime.db.session() as session:
        lapsed = (
            await session.exec(
                select(KioskPresence.kiosk_id, KioskPresence.property_id)
                .where(col(KioskPresence.lease_until) < cutoff)
                .order_by(col(KioskPresence.lease_until))
                .limit(SWEEP_BATCH)
            )
        ).all()
    recorded = 0
    for kiosk_id, property_id in lapsed:
        if await settle_offline(runtime, kiosk_id, property_id, cutoff):
            recorded += 1
    if recorded:
        log.info("kiosk presence sweep: %d kiosk(s) recorded offline", recorded)
    return recorded


async def sweep_forever(runtime: Runtime, stop: asyncio.Event) -> None:
    """The sweeper as a loop (``concierge worker``); a failing round is logged and retried."""
    while not stop.is_set():
        try:
            await sweep(runtime)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("kiosk presence sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), renew_interval(runtime))
