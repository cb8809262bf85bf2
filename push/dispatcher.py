"""The push dispatcher: outbox rows in, FCM messages out, at least once.

Invariants:
- A notification exists only if its event committed: ``record_event`` writes the ``push``
  Outbox row in the domain transaction. ``expand`` leases due rows (``FOR UPDATE SKIP
  LOCKED`` on PostgreSQL, SQLite's write lock) under a fencing token and commits, works out
  recipients from lock-free reads (``Database.reads``), then turns each row still leased to it
  into one ``PushDelivery`` per entitled device. No transaction holds a lock while recipients
  are worked out: on SQLite that lock is the whole database's, and the server's requests
  would wait for it. A worker that dies mid-expansion leaves its rows to others once the lease
  (``outbox_lease_seconds``) runs out.
- Sending never holds a row lock. ``claim`` leases due deliveries to this worker (``lease_until``)
  under a fresh fencing token (``lease_token``) and commits; then the batch is sent; then
  ``record`` writes each outcome only where the token still holds. A worker that dies (or
  freezes) mid-batch loses its lease and another worker re-sends those rows after it expires:
  nothing is lost, and a frozen worker waking up late cannot overwrite the newer outcome.
- A re-send carries the same collapse key (Android ``collapse_key``/``tag``, APNs
  ``apns-collapse-id``, data ``notification_id``), so a phone shows it once.
- Retryable failures back off exponentially with jitter (honouring ``Retry-After``) until
  ``outbox_max_age_seconds`` after the delivery was due, then the delivery is ``failed`` (staff
  see it). Permanent failures disable that device's push token at once; never retried. A
  reminder's retry that would land in the property's quiet hours waits for their end.
- Finished notifications (outbox rows sent, failed or skipped, with their deliveries) are kept
  ``outbox_retention_days`` for staff to look back on, then pruned by the running dispatcher
  (``prune``, about hourly, in batches), so the tables do not grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

import backend.models as models
from backend.crypto import fingerprint
from backend.models import Compartment, Device, Door, Event, Kiosk, Outbox, Property, Unit
from backend.models.base import new_id, utcnow
from backend.models.push import PushDelivery
from backend.runtime import Runtime
from push import messages, preferences, recipients
from push.senders import INVALID_MESSAGE, Outcome, Outgoing, Sender, make_sender

log = logging.getLogger("concierge.push")

MAX_BACKOFF_SECONDS = 3600.0
TERMINAL = ("sent", "failed", "invalid_token", "cancelled")
FINISHED_OUTBOX = ("sent", "failed", "skipped")
PRUNE_EVERY_SECONDS = 3600.0
PRUNE_BATCH = 1000
PRUNE_MAX_BATCHES = 20
# After a round that found some work but not a full batch, wait this long before the next one:
# under a steady stream each round then carries several notifications instead of one (three
# short transactions per round), for at most this much more push latency.
BATCH_WINDOW_SECONDS = 0.05


@dataclass
class Claim:
    delivery_id: int
    outbox_id: int
    event_id: int
    lease_token: str
    device_id: str
    token: str
    attempts: int
    due_at: datetime
    property_id: str = ""


@dataclass
class _Expansion:
    """What one outbox row becomes: its next state and its deliveries."""

    outbox_id: int
    state: str
    last_error: str | None
    deliveries: list[PushDelivery] = field(default_factory=list)


@dataclass
class RoundReport:
    expanded: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    invalid_tokens: int = 0
    lost_leases: int = 0
    cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def work(self) -> int:
        return (
            self.expanded
            + self.sent
            + self.retrying
            + self.failed
            + self.invalid_tokens
            + self.cancelled
            + self.lost_leases
        )


async def _labels(session: AsyncSession, event: Event) -> dict[str, str]:
    """Display names for the ids an event names (never anything else from its payload)."""
    payload = event.payload or {}
    labels: dict[str, str] = {}
    lookups: list[tuple[str, Any, str, str]] = [
        ("compartment", Compartment, "compartment_id", "label"),
        ("kiosk", Kiosk, "kiosk_id", "name"),
        ("door", Door, "door_id", "name"),
        ("unit", Unit, "unit_id", "label"),
    ]
    key_model = getattr(models, "KeyItem", None)
    if key_model is not None:
        lookups.append(("key", key_model, "key_id", "label"))
    for name, model, id_field, attribute in lookups:
        object_id = payload.get(id_field) or (event.unit_id if id_field == "unit_id" else None)
        if not isinstance(object_id, str):
            continue
        row = await session.get(model, object_id)
        # Compartments have no property column; everything else must be the event's property.
        if row is not None and getattr(row, "property_id", event.property_id) == event.property_id:
            labels[name] = str(getattr(row, attribute))
    return labels


async def _load_events(session: AsyncSession, ids: list[int | None]) -> dict[int, Event]:
    """A round's events in one query (a notification's event is read once per phase)."""
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    found = (await session.exec(select(Event).where(col(Event.id).in_(wanted)))).all()
    return {event.id: event for event in found if event.id is not None}


class Dispatcher:
    """One worker's view of the push outbox; many may run against one database."""

    def __init__(self, runtime: Runtime, sender: Sender) -> None:
        self.runtime = runtime
        self.sender = sender
        settings = runtime.settings
        self.batch_size = max(1, min(500, settings.outbox_batch_size))
        self.lease = timedelta(seconds=settings.outbox_lease_seconds)
        self.max_age = timedelta(seconds=settings.outbox_max_age_seconds)
        self.retry_base = max(0.0, settings.outbox_retry_base_seconds)

    # -- expansion: outbox row -> deliveries ----------------------------------------------
    async def expand(self, now: datetime) -> int:
        """Turn due ``push`` outbox rows into deliveries, in three short steps.

        Lease the rows (commit), work out who gets what from plain reads, then write each plan
        where the lease still holds. Why not one transaction: on SQLite its first statement
        takes the database's only write lock, and working out recipients and preferences is
        most of a round's work, so every request of the server would wait for it.
        """
        token = new_id()
        async with self.runtime.db.session() as session:
            ids = list(
                (
                    await session.exec(
                        select(Outbox.id)
                        .where(
                            Outbox.topic == "push",
                            Outbox.state == "pending",
                            col(Outbox.next_attempt_at) <= now,
                            (col(Outbox.lease_until).is_(None)) | (col(Outbox.lease_until) <= now),
                        )
                        .order_by(col(Outbox.id))
                        .limit(self.batch_size)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
            )
            if not ids:
                return 0
            await session.exec(
                update(Outbox)
                .where(col(Outbox.id).in_(ids))
                .values(lease_token=token, lease_until=now + self.lease)
                .execution_options(synchronize_session=False)
            )
        async with self.runtime.db.reads() as session:
            rows = (
                await session.exec(
                    select(Outbox)
                    .where(col(Outbox.id).in_(ids), Outbox.lease_token == token)
                    .order_by(col(Outbox.id))
                )
            ).all()
            events = await _load_events(session, [row.event_id for row in rows])
            plans = [
                await self._plan(
                    session, row, events.get(row.event_id) if row.event_id else None, now
                )
                for row in rows
            ]
        async with self.runtime.db.session() as session:
            expanded = 0
            for plan in plans:
                result = await session.exec(
                    update(Outbox)
                    .where(
                        col(Outbox.id) == plan.outbox_id,
                        col(Outbox.lease_token) == token,
                        col(Outbox.state) == "pending",
                    )
                    .values(
                        state=plan.state,
                        last_error=plan.last_error,
                        done_at=None if plan.deliveries else now,
                        attempts=Outbox.attempts + 1,
                        lease_token=None,
                        lease_until=None,
                    )
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 0:  # our lease ran out and another worker took over
                    log.warning("push.outbox_lease_lost", extra={"outbox_id": plan.outbox_id})
                    continue
                session.add_all(plan.deliveries)
                expanded += 1
        return expanded

    async def _plan(
        self, session: AsyncSession, row: Outbox, event: Event | None, now: datetime
    ) -> _Expansion:
        """The deliveries one outbox row becomes (none: it is skipped, and why)."""
        assert row.id is not None
        template = messages.TEMPLATES.get(event.type) if event is not None else None
        if event is None or event.id is None or template is None:
            return _Expansion(row.id, "skipped", "no_template")
        if now - event.recorded_at > self.max_age:
            # Nobody sent it in time (no dispatcher was running): old news is not pushed.
            return _Expansion(row.id, "skipped", "expired")
        due = now
        if template.category == "reminder":
            prop = await session.get(Property, event.property_id)
            quiet_end = preferences.quiet_hours_end(prop, now) if prop is not None else None
            due = quiet_end or now
        deliveries: list[PushDelivery] = []
        tokens: set[str] = set()  # one phone registered twice gets it once
        for person in await recipients.recipients(session, event, template):
            if not await preferences.wants_push(
                session, person.user_id, event.type, template, person.is_staff
            ):
                continue
            for device in await recipients.push_devices(session, [person.user_id]):
                if device.push_token in tokens:
                    continue
                tokens.add(device.push_token or "")
                deliveries.append(
                    PushDelivery(
                        outbox_id=row.id,
                        event_id=event.id,
                        property_id=event.property_id,
                        event_type=event.type,
                        user_id=person.user_id,
                        device_id=device.id,
                        collapse_key=messages.collapse_key(event.id),
                        due_at=due,
                        next_attempt_at=due,
                        token_fingerprint=fingerprint(device.push_token or ""),
                        created_at=now,
                    )
                )
        if not deliveries:
            return _Expansion(row.id, "skipped", "no_recipients")
        return _Expansion(row.id, "delivering", None, deliveries)

    # -- claim: lease due deliveries under a fresh fencing token, commit --------------------
    async def claim(
        self, now: datetime, report: RoundReport
    ) -> tuple[list[Claim], dict[int, messages.Notice]]:
        """Lease up to a batch of due deliveries; returns them with their notices by event id.

        The lease commits first; devices, events and labels are then read without a lock (see
        ``expand``); only deliveries that can no longer be sent are written again.
        """
        token = new_id()
        async with self.runtime.db.session() as session:
            ids = list(
                (
                    await session.exec(
                        select(PushDelivery.id)
                        .where(
                            PushDelivery.state == "pending",
                            col(PushDelivery.next_attempt_at) <= now,
                            (col(PushDelivery.lease_until).is_(None))
                            | (col(PushDelivery.lease_until) <= now),
                        )
                        .order_by(col(PushDelivery.next_attempt_at), col(PushDelivery.id))
                        .limit(self.batch_size)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
            )
            if not ids:
                return [], {}
            await session.exec(
                update(PushDelivery)
                .where(col(PushDelivery.id).in_(ids))
                .values(
                    lease_token=token,
                    lease_until=now + self.lease,
                    attempts=PushDelivery.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
        claims: list[Claim] = []
        notices: dict[int, messages.Notice] = {}
        cancelled: dict[int, tuple[int, str]] = {}  # delivery id -> (outbox id, reason)
        refreshed: dict[int, str] = {}  # delivery id -> fingerprint of the device's token now
        async with self.runtime.db.reads() as session:
            rows = (
                await session.exec(
                    select(PushDelivery, Device)
                    .join(Device, col(Device.id) == col(PushDelivery.device_id))
                    .where(col(PushDelivery.id).in_(ids), PushDelivery.lease_token == token)
                    .order_by(col(PushDelivery.id))
                )
            ).all()
            events = await _load_events(session, [delivery.event_id for delivery, _ in rows])
            for delivery, device in rows:
                assert delivery.id is not None
                if (
                    device.revoked_at is not None
                    or device.push_token is None
                    or device.push_token_disabled_at is not None
                ):
                    cancelled[delivery.id] = (delivery.outbox_id, "token_disabled")
                    continue
                if delivery.event_id not in notices:
                    event = events.get(delivery.event_id)
                    if event is None or event.type not in messages.TEMPLATES:
                        cancelled[delivery.id] = (delivery.outbox_id, "no_template")
                        continue
                    notices[delivery.event_id] = messages.build_notice(
                        event_id=delivery.event_id,
                        event_type=event.type,
                        property_id=event.property_id,
                        payload=event.payload or {},
                        labels=await _labels(session, event),
                    )
                claims.append(
                    Claim(
                        delivery.id,
                        delivery.outbox_id,
                        delivery.event_id,
                        token,
                        device.id,
                        device.push_token,
                        delivery.attempts,
                        delivery.due_at,
                        delivery.property_id,
                    )
                )
                if fingerprint(device.push_token) != delivery.token_fingerprint:
                    refreshed[delivery.id] = fingerprint(device.push_token)
        if cancelled or refreshed:
            report.cancelled += await self._mark_claimed(token, cancelled, refreshed, now)
        return claims, notices

    async def _mark_claimed(
        self,
        token: str,
        cancelled: dict[int, tuple[int, str]],
        refreshed: dict[int, str],
        now: datetime,
    ) -> int:
        """Cancel deliveries that cannot be sent and note the token fingerprint each other one
        goes to, while our lease holds; how many were cancelled."""
        ours = (col(PushDelivery.lease_token) == token, col(PushDelivery.state) == "pending")
        async with self.runtime.db.session() as session:
            settled: set[int] = set()
            count = 0
            for delivery_id, (outbox_id, reason) in cancelled.items():
                result = await session.exec(
                    update(PushDelivery)
                    .where(col(PushDelivery.id) == delivery_id, *ours)
                    .values(
                        state="cancelled",
                        last_error=reason,
                        done_at=now,
                        lease_token=None,
                        lease_until=None,
                    )
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount:
                    count += 1
                    settled.add(outbox_id)
            for delivery_id, token_fingerprint in refreshed.items():
                await session.exec(
                    update(PushDelivery)
                    .where(col(PushDelivery.id) == delivery_id, *ours)
                    .values(token_fingerprint=token_fingerprint)
                    .execution_options(synchronize_session=False)
                )
            await self._settle(session, settled, now)
        return count

    # -- record: outcomes only where our fencing token still holds ---------------------------
    async def record(
        self,
        claims: list[Claim],
        outcomes: list[Outcome],
        now: datetime,
        report: RoundReport,
        notices: dict[int, messages.Notice] | None = None,
    ) -> None:
        async with self.runtime.db.session() as session:
            touched: set[int] = set()
            for claim, outcome in zip(claims, outcomes, strict=True):
                values = self._next_state(claim, outcome, now, report)
                notice = (notices or {}).get(claim.event_id)
                if values["state"] == "pending" and notice is not None:
                    values["next_attempt_at"] = await _outside_quiet_hours(
                        session, notice, claim.property_id, values["next_attempt_at"]
                    )
                result = await session.exec(
                    update(PushDelivery)
                    .where(
                        col(PushDelivery.id) == claim.delivery_id,
                        col(PushDelivery.lease_token) == claim.lease_token,
                        col(PushDelivery.state) == "pending",
                    )
                    .values(**values)
                    .execution_options(synchronize_session=False)  # none loaded here
                )
                if result.rowcount == 0:
                    report.lost_leases += 1
                    log.warning("push.lease_lost", extra={"delivery_id": claim.delivery_id})
                    continue
                if outcome.permanent:
                    # Only the token we sent to: the phone may have registered a new one since.
                    await session.exec(
                        update(Device)
                        .where(
                            col(Device.id) == claim.device_id,
                            col(Device.push_token) == claim.token,
                            col(Device.push_token_disabled_at).is_(None),
                        )
                        .values(push_token_disabled_at=now)
                    )
                    log.info(
                        "push.token_disabled",
                        extra={
                            "device_id": claim.device_id,
                            "token_fingerprint": fingerprint(claim.token),
                            "error": outcome.error,
                        },
                    )
                if values["state"] != "pending":
                    touched.add(claim.outbox_id)
            await self._settle(session, touched, now)

    def _next_state(
        self, claim: Claim, outcome: Outcome, now: datetime, report: RoundReport
    ) -> dict[str, Any]:
        done = {"lease_token": None, "lease_until": None, "done_at": now}
        if outcome.ok:
            report.sent += 1
            return {"state": "sent", "message_id": outcome.message_id, "last_error": None, **done}
        if outcome.permanent:
            report.invalid_tokens += 1
            return {"state": "invalid_token", "last_error": outcome.error, **done}
        if outcome.give_up:
            report.failed += 1
            return {"state": "failed", "last_error": outcome.error, **done}
        step = min(MAX_BACKOFF_SECONDS, self.retry_base * 2 ** max(0, claim.attempts - 1))
        delay = step / 2 + random.uniform(0, step / 2)  # equal jitter: spread, never zero
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        next_attempt = now + timedelta(seconds=delay)
        if next_attempt > claim.due_at + self.max_age:
            report.failed += 1
            return {"state": "failed", "last_error": outcome.error, **done}
        report.retrying += 1
        return {
            "state": "pending",
            "last_error": outcome.error,
            "next_attempt_at": next_attempt,
            "lease_token": None,
            "lease_until": None,
        }

    async def _settle(self, session: AsyncSession, outbox_ids: set[int], now: datetime) -> None:
        """Set each notification's overall state once none of its deliveries is pending.

        The outbox rows are locked first (in id order), so two workers finishing the last two
        deliveries of one notification at once cannot both miss the other's result. One query
        locks them and one counts their deliveries' states, for the whole round.
        """
        if not outbox_ids:
            return
        rows = (
            await session.exec(
                select(Outbox)
                .where(col(Outbox.id).in_(sorted(outbox_ids)))
                .order_by(col(Outbox.id))
                .with_for_update()
            )
        ).all()
        delivering = [row for row in rows if row.state == "delivering"]
        if not delivering:
            return
        counts: dict[int, dict[str, int]] = {}
        for outbox_id, state, count in (
            await session.exec(
                select(PushDelivery.outbox_id, PushDelivery.state, func.count())
                .where(col(PushDelivery.outbox_id).in_([row.id for row in delivering]))
                .group_by(col(PushDelivery.outbox_id), col(PushDelivery.state))
            )
        ).all():
            counts.setdefault(outbox_id, {})[state] = count
        for row in delivering:
            assert row.id is not None
            states = counts.get(row.id, {})
            if states.get("pending"):
                continue
            if states.get("failed"):
                row.state, row.last_error = "failed", "retries_exhausted"
            elif states.get("sent"):
                row.state, row.last_error = "sent", None
            else:
                row.state, row.last_error = "failed", "no_device_reached"
            row.done_at = now
            session.add(row)
        await session.flush()

    # -- one round, and the loop ------------------------------------------------------------
    async def run_once(self, now: datetime | None = None) -> RoundReport:
        """Expand due notifications, then claim, send and record one batch of deliveries."""
        report = RoundReport()
        now = now or utcnow()
        report.expanded = await self.expand(now)
        claims, notices = await self.claim(now, report)
        if not claims:
            return report
        batch: list[Outgoing] = []
        outcomes_by_id: dict[int, Outcome] = {}
        for c in claims:
            notice = notices[c.event_id]
            try:
                expires = int((now + notice.template.ttl).timestamp())
                message = messages.fcm_message(notice, c.token, expires_at_epoch=expires)
            except (ValueError, TypeError):  # a message the SDK refuses: fail it alone
                log.exception("push.message_invalid", extra={"delivery_id": c.delivery_id})
                outcomes_by_id[c.delivery_id] = INVALID_MESSAGE
                continue
            batch.append(Outgoing(c.delivery_id, c.token, message))
        if batch:
            for item, outcome in zip(batch, await self.sender.send(batch), strict=True):
                outcomes_by_id[item.delivery_id] = outcome
        outcomes = [outcomes_by_id[c.delivery_id] for c in claims]
        # Outcomes are judged at the time they arrive (a long send must not look early).
        await self.record(claims, outcomes, max(now, utcnow()), report, notices)
        return report

    async def prune(self, now: datetime | None = None) -> int:
        """Delete up to ``PRUNE_BATCH`` finished notifications older than the retention, with
        their deliveries; how many were deleted (0: nothing left, or retention 0 = keep all)."""
        days = self.runtime.settings.outbox_retention_days
        if days <= 0:
            return 0
        cutoff = (now or utcnow()) - timedelta(days=days)
        async with self.runtime.db.session() as session:
            ids = list(
                (
                    await session.exec(
                        select(Outbox.id)
                        .where(
                            col(Outbox.state).in_(FINISHED_OUTBOX),
                            col(Outbox.done_at) < cutoff,
                        )
                        .order_by(col(Outbox.id))
                        .limit(PRUNE_BATCH)
                    )
                ).all()
            )
            if not ids:
                return 0
            await session.exec(  # type: ignore[call-overload]
                delete(PushDelivery).where(col(PushDelivery.outbox_id).in_(ids))
            )
            await session.exec(delete(Outbox).where(col(Outbox.id).in_(ids)))  # type: ignore[call-overload]
        return len(ids)

    async def _prune_all(self) -> None:
        try:
            for _ in range(PRUNE_MAX_BATCHES):  # a long backlog goes over several runs
                if await self.prune() < PRUNE_BATCH:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("push.prune_failed")

    async def drain(self, now: datetime | None = None, max_rounds: int = 1000) -> RoundReport:
        """Run rounds until nothing is due (tests, ``concierge worker --once``)."""
        total = RoundReport()
        for _ in range(max_rounds):
            report = await self.run_once(now)
            for name in (
                "expanded",
                "sent",
                "retrying",
                "failed",
                "invalid_tokens",
                "lost_leases",
                "cancelled",
            ):
                setattr(total, name, getattr(total, name) + getattr(report, name))
            if report.work == 0:
                break
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a failing round is logged and retried after a pause."""
        poll = self.runtime.settings.outbox_poll_seconds
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while not stop.is_set():
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_EVERY_SECONDS
                await self._prune_all()
            try:
                report = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("push.round_failed")
                report = RoundReport()
                await _sleep_or_stop(stop, max(poll, 1.0))
                continue
            if report.work == 0:
                await _sleep_or_stop(stop, poll)
            elif not self._was_full(report):
                await _sleep_or_stop(stop, min(poll, BATCH_WINDOW_SECONDS))

    def _was_full(self, report: RoundReport) -> bool:
        """A round that hit the batch size leaves work behind: the next one starts at once."""
        settled = report.work - report.expanded
        return report.expanded >= self.batch_size or settled >= self.batch_size


async def _outside_quiet_hours(
    session: AsyncSession, notice: messages.Notice, property_id: str, moment: datetime
) -> datetime:
    """A reminder's retry that would land in the property's quiet hours waits for their end,
    as its first attempt did; other notifications retry when their backoff says."""
    if notice.template.category != "reminder":
        return moment
    prop = await session.get(Property, property_id)
    quiet_end = preferences.quiet_hours_end(prop, moment) if prop is not None else None
    return quiet_end or moment


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def start_push_dispatcher(app: Any, runtime: Runtime) -> None:
    """Server startup hook: run the dispatcher in the background (if background jobs are on)."""
    if not runtime.settings.background_jobs:
        return
    sender = make_sender(runtime.settings)
    dispatcher = Dispatcher(runtime, sender)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop), name="push-dispatcher")
    runtime.background.append(task)
    runtime.extensions["push_dispatcher"] = dispatcher

    async def close() -> None:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await sender.close()

    runtime.extensions.setdefault("closers", []).append(close)
