"""The policy engine: per-property scheduled work (parcel reminders, overflow list, overdue keys).

Feature services register jobs in ``POLICY_JOBS`` at import: async
``(session, runtime, property, now) -> list[action dict]``. ``run_once`` runs every job for
every property, each job and property in its own unit of work, so one failing job neither
blocks nor rolls back the others. Jobs are idempotent (they mark what they did, e.g.
``Parcel.reminded_at``), so running twice, or in two processes at once, repeats nothing.

Inside the server the engine runs every ``policy_interval_seconds`` when
``settings.background_jobs`` is on; with several server processes exactly one runs it at a
time: it holds the ``job_lease`` row named ``policy`` (taken under a row lock; a crashed
holder's lease simply expires).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import JobLease, Property
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services.properties import PropertyPolicy

log = logging.getLogger("concierge.policy")

PolicyJob = Callable[[AsyncSession, Runtime, Property, datetime], Awaitable[list[dict[str, Any]]]]
POLICY_JOBS: list[PolicyJob] = []
LEASE_NAME = "policy"


def in_quiet_hours(prop: Property, policy: PropertyPolicy, now: datetime) -> bool:
    """Whether ``now`` falls in the property's quiet hours, read in the property's timezone."""
    quiet = policy.quiet_hours
    if quiet is None:
        return False
    start = time.fromisoformat(quiet.start)
    end = time.fromisoformat(quiet.end)
    if start == end:
        return False
    local = now.astimezone(ZoneInfo(prop.timezone)).time().replace(tzinfo=None)
    if start < end:
        return start <= local < end
    return local >= start or local < end


async def run_once(runtime: Runtime, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every registered job for every property, now; the actions taken, in order."""
    now = now or utcnow()
    async with runtime.db.session() as session:
        property_ids = list(
            (await session.exec(select(Property.id).order_by(col(Property.id)))).all()
        )
    actions: list[dict[str, Any]] = []
    for property_id in property_ids:
        for job in list(POLICY_JOBS):
            try:
                async with runtime.db.session() as session:
                    prop = await session.get(Property, property_id)
                    if prop is None:
                        break
                    actions.extend(await job(session, runtime, prop, now))
            except Exception:
                log.exception("policy job %s failed for property %s", job.__name__, property_id)
                actions.append(
                    {"action": "job.failed", "job": job.__name__, "property_id": property_id}
                )
    return actions


async def acquire_lease(
    runtime: Runtime, name: str, holder: str, ttl: timedelta, now: datetime
) -> bool:
    """Take or renew the named lease; False while another live holder has it."""
    try:
        async with runtime.db.session() as session:
            lease = (
                await session.exec(select(JobLease).where(JobLease.name == name).with_for_update())
            ).first()
            if lease is None:
                session.add(JobLease(name=name, holder=holder, until=now + ttl))
                return True
            if lease.holder != holder and lease.until > now:
                return False
            lease.holder = holder
            lease.until = now + ttl
            session.add(lease)
            return True
    except IntegrityError:  # another process inserted the row first
        return False


async def run_under_lease(
    runtime: Runtime, name: str, interval: float, work: Callable[[], Awaitable[None]]
) -> None:
    """Every ``interval`` seconds, run ``work`` if this process holds the named lease (so one
    process at a time does it); a failing round is logged and the next one tries again."""
    holder = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"
    ttl = timedelta(seconds=interval * 3 + 30)
    while True:
        try:
            if await acquire_lease(runtime, name, holder, ttl, utcnow()):
                await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background job %s failed", name)
        await asyncio.sleep(interval)


async def _policy_round(runtime: Runtime) -> None:
    for action in await run_once(runtime):
        log.info("policy action %s", action.get("action"), extra={"action": action})


async def run_scheduler(runtime: Runtime) -> None:
    """The policy job every ``policy_interval_seconds`` while this process holds its lease
    (in a server with background jobs, or in ``concierge worker``); runs until cancelled."""
    interval = max(runtime.settings.policy_interval_seconds, 1.0)
    await run_under_lease(runtime, LEASE_NAME, interval, lambda: _policy_round(runtime))


async def start_policy_scheduler(_app: Any, runtime: Runtime) -> None:
    """STARTUP_HOOK: the scheduled policy job (only when ``settings.background_jobs``)."""
    if runtime.settings.background_jobs:
        runtime.background.append(asyncio.create_task(run_scheduler(runtime)))
