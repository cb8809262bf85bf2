"""Kiosk commands routed through the database, for deployments without Redis.

With Redis, a command for a kiosk connected to another process travels over pub/sub
(realtime/relay.py). Without it, the database is the only thing every process shares, and it
already says who holds the kiosk (the presence lease, realtime/presence.py). So the sender
writes the command into ``kiosk_command`` addressed to the holder's process id and polls the
row for the answer; the holder's hub polls for rows addressed to it (only while it holds kiosks),
takes each one (``pending`` -> ``sent``, once), sends it over the kiosk's channel and writes the
ack back (``done``). Both polls read through the hub's read sessions (on SQLite: no write lock);
every write is its own short transaction, never held across the wait for the kiosk.

Latency is a poll interval on each side (``POLL_SECONDS``), fine for a remote door opening. The
sender deletes its row when answered or given up; ``purge`` drops rows a dead sender left.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import KioskCommand
from backend.models.base import new_id, utcnow
from backend.runtime import Runtime

POLL_SECONDS = 0.1
ANSWER_MARGIN_SECONDS = 1.0  # the holder's write-back after the kiosk's own timeout
PURGE_AFTER = timedelta(minutes=1)

Reads = async_sessionmaker[AsyncSession]


# -- the sender's side ---------------------------------------------------------------------


async def route(
    runtime: Runtime,
    reads: Reads,
    holder: str,
    kiosk_id: str,
    command: dict[str, Any],
    wait_seconds: float,
) -> dict[str, Any] | None:
    """Address ``command`` to the process ``holder`` and wait for its answer.

    Returns what the holder wrote back (the kiosk's ack, or ``{"_offline": True, ...}`` when the
    kiosk was not connected there or did not answer), or None when nobody answered in time.
    """
    now = utcnow()
    row_id = new_id()
    async with runtime.db.session() as session:
        session.add(
            KioskCommand(
                id=row_id,
                kiosk_id=kiosk_id,
                process_id=holder,
                command=command,
                created_at=now,
                expires_at=now + timedelta(seconds=wait_seconds),
            )
        )
    try:
        return await _answer_of(reads, row_id, wait_seconds + ANSWER_MARGIN_SECONDS)
    finally:
        async with runtime.db.session() as session:
            await session.exec(delete(KioskCommand).where(col(KioskCommand.id) == row_id))  # type: ignore[call-overload]


async def _answer_of(reads: Reads, row_id: str, wait_seconds: float) -> dict[str, Any] | None:
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        async with reads() as session:
            row = (
                await session.exec(
                    select(KioskCommand.state, KioskCommand.result).where(
                        col(KioskCommand.id) == row_id
                    )
                )
            ).first()
        if row is not None and row[0] == "done":
            return dict(row[1] or {})
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(POLL_SECONDS)


# -- the holder's side ---------------------------------------------------------------------


async def addressed_to(reads: Reads, process_id: str, now: datetime) -> list[KioskCommand]:
    """Pending, unexpired commands for this process, oldest first."""
    async with reads() as session:
        rows = await session.exec(
            select(KioskCommand)
            .where(
                col(KioskCommand.process_id) == process_id,
                col(KioskCommand.state) == "pending",
                col(KioskCommand.expires_at) > now,
            )
            .order_by(col(KioskCommand.created_at))
        )
        return list(rows.all())


async def take(runtime: Runtime, row_id: str) -> bool:
    """``pending`` -> ``sent``; True for the one caller that moved it (a command goes out once)."""
    async with runtime.db.session() as session:
        result = await session.exec(
            update(KioskCommand)
            .where(col(KioskCommand.id) == row_id, col(KioskCommand.state) == "pending")
            .values(state="sent")  # type: ignore[call-overload]
        )
        return int(getattr(result, "rowcount", 0) or 0) == 1


async def answer(runtime: Runtime, row_id: str, result: dict[str, Any]) -> None:
    async with runtime.db.session() as session:
        await session.exec(
            update(KioskCommand)
            .where(col(KioskCommand.id) == row_id)
            .values(state="done", result=result)  # type: ignore[call-overload]
        )


async def purge(runtime: Runtime, now: datetime) -> None:
    """Drop rows long past their expiry (their sender died before deleting them)."""
    async with runtime.db.session() as session:
        await session.exec(
            delete(KioskCommand).where(col(KioskCommand.expires_at) < now - PURGE_AFTER)  # type: ignore[call-overload]
        )
