"""The relay: publishes committed events to this process's sockets, fanned out across processes.

Source of truth: the Event table. Ids become visible in increasing order because appends are
serialised until commit (backend/services/events.py), so a reader that remembers the last id it
handled and asks for ``id > last`` never skips a committed event, and never sees one from a
transaction that rolled back (it is not in the table).

One ``Hub`` per process (``runtime.extensions["realtime"]``), with one consumer task that handles,
in order, three kinds of input:
- **local commits**: ``record_event`` notes each appended event; after COMMIT the hub is handed the
  events and the id committed just before them (``prev_id``). If ``prev_id`` is the last id the hub
  handled, they are dispatched at once; otherwise the hub reads the table from its last id (it
  cannot have missed anything the table holds).
- **Redis** (with ``CONCIERGE_REDIS_URL``): every process publishes its local commits on
  ``<prefix>:events``; every process subscribes and treats them like local commits (same
  ``prev_id`` check, so a lost or reordered message only costs a table read). Pub/sub delivers at
  most once and keeps no history, which is fine: the table fills any hole.
- **polls** every ``realtime_poll_seconds``: catch events committed by processes that did not
  publish them (CLI, workers) or announcements lost while Redis was away.

Dispatch encodes each event once and hands the same string to every socket that may see it
(``visibility.may_see``), without awaiting: each connection has a bounded queue drained by its own
writer, and a connection whose queue overflows is closed as a slow consumer (it resumes from the
table). Redis loss: readiness reports ``redis: unavailable``, the bridge reconnects with backoff,
and meanwhile polling keeps every local socket served.

Kiosk channels: which process holds a kiosk's channel is a lease row in the database
(``kiosk_presence``, realtime/presence.py), claimed on connect, renewed by the hub's presence task
every third of ``kiosk_presence_lease_seconds`` and expired on disconnect. The same task sweeps
leases of dead processes (``kiosk.offline`` once they lapsed longer than the grace period), so
presence is right with or without Redis, and after a process crash. With Redis, commands for a
kiosk connected to another process travel on ``<prefix>:proc:<process id>``, addressed through the
key ``<prefix>:kiosk:<id>`` (refreshed while connected, with an expiry, deleted on disconnect).
Without Redis they travel through the ``kiosk_command`` table, addressed to the lease holder,
which the hub's command task polls while it holds kiosks (realtime/commands.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec
from sqlalchemy import event as sa_event
from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.db import _sqlite_pragmas, sessionmaker
from backend.models import Event, KioskCommand
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services import events as event_log
from realtime import commands, presence
from realtime.frames import OutgoingFrame
from realtime.protocol import encode, envelope, iso
from realtime.visibility import Audience, may_see

log = logging.getLogger("concierge.realtime")

EXTENSION = "realtime"
BATCH = 500
PRESENCE_TTL_SECONDS = 30
SWEEP_SECONDS = 0.5


class Subscriber(Protocol):
    """A connected app socket, as the hub sees it."""

    audience: Audience
    user_id: str

    def deliver(self, event_id: int, frame: OutgoingFrame) -> None: ...

    def request_recheck(self) -> None: ...

    def sweep(self, now: float) -> None: ...

    def shutdown(self) -> None: ...


class KioskLink(Protocol):
    """A connected kiosk channel."""

    kiosk_id: str
    property_id: str

    async def command(self, command: dict[str, Any], wait_seconds: float) -> dict[str, Any]: ...

    def sweep(self, now: float) -> None: ...

    def shutdown(self) -> None: ...


class Announcement(msgspec.Struct):
    prev: int
    events: list[dict[str, Any]]
    origin: str = ""


class Hub:
    """Per-process fan-out of committed events to subscribers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.process_id = secrets.token_hex(8)
        self.last_id = 0
        self.subscribers: set[Subscriber] = set()
        self.by_property: dict[str, set[Subscriber]] = {}
        self.admins: set[Subscriber] = set()
        self.by_user: dict[str, set[Subscriber]] = {}
        self.kiosks: dict[str, KioskLink] = {}
        self.stats: dict[str, int] = {
            "dispatched": 0,
            "direct_writes": 0,
            "table_reads": 0,
            "slow_consumers": 0,
            "redis_errors": 0,
        }
        self._inbox: asyncio.Queue[tuple[str, int, list[dict[str, Any]]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []
        self._serving: set[asyncio.Task[Any]] = set()
        self._started: asyncio.Future[None] | None = None
        self.started = False
        self.reads = _read_sessions(runtime)
        self.redis: RedisBridge | None = None
        if self.settings.redis_url:
            self.redis = RedisBridge(
                self, self.settings.redis_url, self.settings.redis_channel_prefix
            )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Idempotent: the first caller starts the hub, concurrent callers wait for it."""
        if self._started is not None:
            await asyncio.shield(self._started)
            return
        self._started = asyncio.get_running_loop().create_future()
        try:
            async with self.reads() as session:
                head = (await session.exec(select(func.max(Event.id)))).one()  # type: ignore[arg-type]
            self.last_id = int(head or 0)
            event_log.COMMIT_LISTENERS.append(self._on_commit)
            self._tasks.append(asyncio.create_task(self._consume(), name="realtime-relay"))
            self._tasks.append(asyncio.create_task(self._poll(), name="realtime-poll"))
            self._tasks.append(asyncio.create_task(self._sweep(), name="realtime-sweep"))
            self._tasks.append(asyncio.create_task(self._presence(), name="realtime-presence"))
            if self.redis is None:
                self._tasks.append(asyncio.create_task(self._commands(), name="realtime-commands"))
            if self.redis is not None:
                self._tasks.append(asyncio.create_task(self.redis.run(), name="realtime-redis"))
            self.started = True
            self._started.set_result(None)
        except BaseException as exc:
            self._started.set_exception(exc)
            self._started.exception()  # mark retrieved
            self._started = None
            raise

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            event_log.COMMIT_LISTENERS.remove(self._on_commit)
        for subscriber in list(self.subscribers):
            subscriber.shutdown()
        for kiosk in list(self.kiosks.values()):
            kiosk.shutdown()
        for task in self._serving:
            task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.redis is not None:
            await self.redis.close()
        if self.reads.kw["bind"] is not self.runtime.db.engine:
            await self.reads.kw["bind"].dispose()

    # -- subscribers -----------------------------------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)
        self.by_user.setdefault(subscriber.user_id, set()).add(subscriber)
        self._index(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        users = self.by_user.get(subscriber.user_id)
        if users is not None:
            users.discard(subscriber)
            if not users:
                del self.by_user[subscriber.user_id]
        self._unindex(subscriber)

    def reindex(self, subscriber: Subscriber, old: Audience) -> None:
        self._unindex(subscriber, old)
        if subscriber in self.subscribers:
            self._index(subscriber)

    def _index(self, subscriber: Subscriber) -> None:
        if subscriber.audience.is_admin:
            self.admins.add(subscriber)
        for property_id in subscriber.audience.member_of:
            self.by_property.setdefault(property_id, set()).add(subscriber)

    def _unindex(self, subscriber: Subscriber, audience: Audience | None = None) -> None:
        audience = audience or subscriber.audience
        self.admins.discard(subscriber)
        for property_id in audience.member_of:
            members = self.by_property.get(property_id)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self.by_property[property_id]

    # -- input -----------------------------------------------------------------------------

    def _on_commit(self, engine: Any, prev_id: int, events: list[dict[str, Any]]) -> None:
        """Commit listener (event loop thread): only commits on this runtime's database."""
        if engine is not self.runtime.db.engine.sync_engine:
            return
        wire = [_wire(event) for event in events]
        self._inbox.put_nowait(("local", prev_id, wire))
        if self.redis is not None:
            self.redis.publish_soon(Announcement(prev_id, wire, self.process_id))

    def announce(self, kind: str, prev_id: int, events: list[dict[str, Any]]) -> None:
        self._inbox.put_nowait((kind, prev_id, events))

    def nudge(self) -> None:
        """Read the table now (after a reconnect, or when an announcement may be missing)."""
        self._inbox.put_nowait(("poll", -1, []))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.realtime_poll_seconds)
            if self._inbox.empty():
                self.nudge()

    async def _consume(self) -> None:
        while True:
            _kind, prev_id, events = await self._inbox.get()
            try:
                if events and prev_id == self.last_id:
                    self._dispatch_all(events)
                elif events and events[-1]["id"] <= self.last_id:
                    continue  # already handled (our own announcement echoed by Redis)
                else:
                    await self._read_table()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("realtime relay failed; retrying from the table")
                await asyncio.sleep(0.5)
                self.nudge()

    async def _read_table(self) -> None:
        self.stats["table_reads"] += 1
        while True:
            async with self.reads() as session:
                rows = (
                    await session.exec(
                        select(Event)
                        .where(col(Event.id) > self.last_id)
                        .order_by(col(Event.id))
                        .limit(BATCH)
                    )
                ).all()
            if not rows:
                return
            self._dispatch_all([_wire(event_log._snapshot(row)) for row in rows])
            if len(rows) < BATCH:
                return

    def _dispatch_all(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            if event["id"] <= self.last_id:
                continue
            self.last_id = event["id"]
            self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        """Encode once; hand the same frame to every subscriber that may see it. No awaits."""
        view = _EventView(event)
        candidates = self.by_property.get(view.property_id, ())
        frame: OutgoingFrame | None = None
        for group in (candidates, self.admins):
            for subscriber in tuple(group):
                if group is not self.admins and subscriber.audience.is_admin:
                    continue  # admins are served from their own set, once
                if may_see(subscriber.audience, view):
                    if frame is None:
                        frame = OutgoingFrame(encode(envelope(event)))
                    subscriber.deliver(view.id, frame)
        self.stats["dispatched"] += 1
        # Membership changes: re-check the user's sockets at once (revocation closes them).
        if view.type.startswith("member.") and view.user_id:
            for subscriber in tuple(self.by_user.get(view.user_id, ())):
                subscriber.request_recheck()

    # -- housekeeping ----------------------------------------------------------------------

    async def _sweep(self) -> None:
        last_presence = 0.0
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for subscriber in tuple(self.subscribers):
                try:
                    subscriber.sweep(now)
                except Exception:
                    log.exception("websocket sweep failed")
            for kiosk in tuple(self.kiosks.values()):
                kiosk.sweep(now)
            if self.redis is not None and now - last_presence > PRESENCE_TTL_SECONDS / 3:
                last_presence = now
                await self.redis.refresh_presence(list(self.kiosks))

    async def _presence(self) -> None:
        """Renew this process's kiosk leases, then sweep every process's lapsed ones."""
        while True:
            await asyncio.sleep(presence.renew_interval(self.runtime))
            try:
                await self.renew_leases()
            except Exception:
                log.exception("kiosk presence renewal failed")
            try:
                await presence.sweep(self.runtime)
                if self.redis is None:
                    await commands.purge(self.runtime, utcnow())
            except Exception:
                log.exception("kiosk presence sweep failed")

    async def renew_leases(self) -> None:
        held = {kiosk_id: link.property_id for kiosk_id, link in self.kiosks.items()}
        restored = await presence.renew(self.runtime, self.process_id, held, utcnow())
        for kiosk_id in restored:
            await presence.record_presence(self.runtime, kiosk_id, held[kiosk_id], online=True)

    async def _commands(self) -> None:
        """Without Redis: take commands other processes addressed to this one's kiosks."""
        while True:
            await asyncio.sleep(commands.POLL_SECONDS)
            if not self.kiosks:
                continue  # nobody addresses a process holding no kiosk
            try:
                for row in await commands.addressed_to(self.reads, self.process_id, utcnow()):
                    if await commands.take(self.runtime, row.id):
                        task = asyncio.create_task(self._serve_command(row))
                        self._serving.add(task)
                        task.add_done_callback(self._serving.discard)
            except Exception:
                log.exception("kiosk command polling failed")
                await asyncio.sleep(1.0)

    async def _serve_command(self, row: KioskCommand) -> None:
        link = self.kiosks.get(row.kiosk_id)
        remaining = (row.expires_at - utcnow()).total_seconds()
        result: dict[str, Any]
        if link is None or remaining <= 0:
            result = {"_offline": True, "ok": False, "detail": "kiosk not connected here"}
        else:
            try:
                result = await link.command(dict(row.command), remaining)
            except TimeoutError:
                result = {"_offline": True, "ok": False, "detail": "timeout"}
            except Exception as exc:
                result = {"_offline": True, "ok": False, "detail": type(exc).__name__}
        try:
            await commands.answer(self.runtime, row.id, result)
        except Exception:
            log.exception("could not write back the ack of kiosk command %s", row.id)

    # -- kiosks ----------------------------------------------------------------------------

    async def kiosk_connected(self, link: KioskLink) -> KioskLink | None:
        """Register a kiosk channel and claim its lease; returns the link it replaces.

        A failed claim is logged, not raised: the next renewal puts the missing lease back.
        """
        old = self.kiosks.get(link.kiosk_id)
        self.kiosks[link.kiosk_id] = link
        try:
            await presence.claim(
                self.runtime, link.kiosk_id, link.property_id, self.process_id, utcnow()
            )
        except Exception:
            log.exception("could not claim the presence lease of kiosk %s", link.kiosk_id)
        if self.redis is not None:
            await self.redis.claim_kiosk(link.kiosk_id)
        return old

    async def kiosk_disconnected(self, link: KioskLink) -> None:
        if self.kiosks.get(link.kiosk_id) is link:
            del self.kiosks[link.kiosk_id]
            if self.redis is not None:
                await self.redis.release_kiosk(link.kiosk_id)
            try:
                await presence.release(self.runtime, link.kiosk_id, self.process_id, utcnow())
            except Exception:  # the lease lapses by itself; the sweeper settles it
                log.exception("could not release the presence lease of kiosk %s", link.kiosk_id)

    async def kiosk_online_anywhere(self, kiosk_id: str) -> bool:
        """Connected here, or (Redis) announced by another process, or under an unexpired lease."""
        if kiosk_id in self.kiosks:
            return True
        if self.redis is not None and await self.redis.kiosk_owner(kiosk_id) is not None:
            return True
        return await presence.holder(self.runtime, kiosk_id, utcnow()) is not None


def _read_sessions(runtime: Runtime) -> async_sessionmaker[AsyncSession]:
    """Sessions for the relay's and sockets' reads.

    On SQLite the server's engine opens every transaction with BEGIN IMMEDIATE (the write lock),
    so a read would wait behind any open request; reads here use their own engine in autocommit
    mode (WAL: readers never block writers, each statement sees committed data). On PostgreSQL
    the server's engine is used as is.
    """
    if not runtime.db.is_sqlite:
        return runtime.db.sessions
    engine = create_async_engine(runtime.settings.database_url, connect_args={"timeout": 30})
    sa_event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return sessionmaker(engine)


class _EventView:
    """Attribute access over a wire event for ``may_see``."""

    __slots__ = ("id", "property_id", "type", "unit_id", "user_id")

    def __init__(self, event: dict[str, Any]) -> None:
        self.id: int = event["id"]
        self.property_id: str = event["property_id"]
        self.type: str = event["type"]
        self.unit_id: str | None = event.get("unit_id")
        self.user_id: str | None = event.get("user_id")


def _wire(snapshot: dict[str, Any]) -> dict[str, Any]:
    wire = dict(snapshot)
    occurred_at = wire.get("occurred_at")
    if not isinstance(occurred_at, str) and occurred_at is not None:
        wire["occurred_at"] = iso(occurred_at)
    return wire


class RedisBridge:
    """Cross-process fan-out over Redis pub/sub, with reconnects; the table stays the truth."""

    def __init__(self, hub: Hub, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        self.hub = hub
        self.prefix = prefix
        self.client = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=None, health_check_interval=10
        )
        self.up = False
        self.events_channel = f"{prefix}:events"
        self.proc_channel = f"{prefix}:proc:{hub.process_id}"
        self._pending_publish: set[asyncio.Task[Any]] = set()
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _kiosk_key(self, kiosk_id: str) -> str:
        return f"{self.prefix}:kiosk:{kiosk_id}"

    async def probe(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), 2))
        except Exception:
            return False

    async def run(self) -> None:
        backoff = 0.2
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.events_channel, self.proc_channel)
                self.up = True
                backoff = 0.2
                self.hub.nudge()  # catch up on whatever was announced while we were away
                await self.refresh_presence(list(self.hub.kiosks))
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    await self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.hub.stats["redis_errors"] += 1
                if self.up:
                    log.warning(
                        "redis fan-out lost (%s); polling the table meanwhile", type(exc).__name__
                    )
                self.up = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.up = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _handle(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        data = message.get("data")
        if not isinstance(data, bytes | str):
            return
        try:
            if channel == self.events_channel:
                announcement = msgspec.json.decode(data, type=Announcement)
                if announcement.origin != self.hub.process_id:
                    self.hub.announce("redis", announcement.prev, announcement.events)
            elif channel == self.proc_channel:
                await self._handle_direct(msgspec.json.decode(data))
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError):
            log.warning("ignored a malformed realtime message on %s", channel)
            self.hub.nudge()

    def publish_soon(self, announcement: Announcement) -> None:
        if not self.up:
            return  # other processes catch up by polling
        task = asyncio.get_running_loop().create_task(self._publish(announcement))
        self._pending_publish.add(task)
        task.add_done_callback(self._pending_publish.discard)

    async def _publish(self, announcement: Announcement) -> None:
        try:
            await self.client.publish(self.events_channel, msgspec.json.encode(announcement))
        except Exception:
            self.hub.stats["redis_errors"] += 1

    # kiosk routing ------------------------------------------------------------------------

    async def claim_kiosk(self, kiosk_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.set(
                self._kiosk_key(kiosk_id), self.hub.process_id, ex=PRESENCE_TTL_SECONDS
            )

    async def release_kiosk(self, kiosk_id: str) -> None:
        with contextlib.suppress(Exception):
            key = self._kiosk_key(kiosk_id)
            if await self.client.get(key) == self.hub.process_id.encode():
                await self.client.delete(key)

    async def refresh_presence(self, kiosk_ids: list[str]) -> None:
        for kiosk_id in kiosk_ids:
            await self.claim_kiosk(kiosk_id)

    async def kiosk_owner(self, kiosk_id: str) -> str | None:
        try:
            owner = await self.client.get(self._kiosk_key(kiosk_id))
        except Exception:
            return None
        return owner.decode() if isinstance(owner, bytes) else None

    async def command_remote(
        self,
        owner: str,
        kiosk_id: str,
        command: dict[str, Any],
        wait_seconds: float,
    ) -> dict[str, Any] | None:
        """Route a command to the process holding the kiosk; None when nobody took it."""
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            body = {
                "op": "command",
                "request_id": request_id,
                "reply_to": self.proc_channel,
                "kiosk_id": kiosk_id,
                "command": command,
                "timeout": wait_seconds,
            }
            receivers = await self.client.publish(
                f"{self.prefix}:proc:{owner}", msgspec.json.encode(body)
            )
            if not receivers:
                return None
            return await asyncio.wait_for(future, wait_seconds + 1.0)
        except TimeoutError:
            return {"ok": False, "detail": "timeout", "_offline": True}
        except Exception:
            return None
        finally:
            self._replies.pop(request_id, None)

    async def _handle_direct(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if body.get("op") == "reply":
            future = self._replies.get(str(body.get("request_id")))
            if future is not None and not future.done():
                future.set_result(dict(body.get("result") or {}))
        elif body.get("op") == "command":
            task = asyncio.get_running_loop().create_task(self._serve_remote(body))
            self._pending_publish.add(task)
            task.add_done_callback(self._pending_publish.discard)

    async def _serve_remote(self, body: dict[str, Any]) -> None:
        link = self.hub.kiosks.get(str(body.get("kiosk_id")))
        result: dict[str, Any]
        if link is None:
            result = {"_offline": True, "ok": False, "detail": "kiosk not connected here"}
        else:
            try:
                result = await link.command(dict(body["command"]), float(body["timeout"]))
            except Exception as exc:
                result = {"_offline": True, "ok": False, "detail": type(exc).__name__}
        with contextlib.suppress(Exception):
            await self.client.publish(
                str(body["reply_to"]),
                msgspec.json.encode(
                    {"op": "reply", "request_id": body["request_id"], "result": result}
                ),
            )

    async def close(self) -> None:
        for task in list(self._pending_publish):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.client.aclose()  # type: ignore[no-untyped-call]


def current_hub(runtime: Runtime) -> Hub:
    hub = runtime.extensions.get(EXTENSION)
    if hub is None:
        hub = Hub(runtime)
        runtime.extensions[EXTENSION] = hub
        runtime.extensions.setdefault("closers", []).append(hub.stop)
    assert isinstance(hub, Hub)
    return hub


async def get_hub(runtime: Runtime) -> Hub:
    """This process's hub, started on first use."""
    hub = current_hub(runtime)
    await hub.start()
    return hub


async def startup(_app: Any, runtime: Runtime) -> None:
    """Startup hook: Redis readiness; start the relay now when serving for real (else lazily)."""
    settings = runtime.settings
    if settings.redis_url:
        hub = current_hub(runtime)
        assert hub.redis is not None
        runtime.extensions.setdefault("readiness", {})["redis"] = hub.redis.probe
    if settings.redis_url or settings.background_jobs:
        try:
            await get_hub(runtime)
        except Exception:  # e.g. the database is not up yet: the first socket starts it
            log.warning("realtime relay not started; it starts with the first connection")
