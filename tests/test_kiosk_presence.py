"""Kiosk presence leases (realtime/presence.py): presence survives a dead server process.

In-process: the lease follows the channel (claim, renew, expire on disconnect, takeover by a
reconnect elsewhere), a lost lease is put back, and the sweeper records ``kiosk.offline`` once
for a lapsed lease while sparing a reclaimed one, even with two sweepers racing.

Separate processes (``concierge serve`` twice on one database, no Redis): a kiosk on process A,
A SIGKILLed, process B records exactly one ``kiosk.offline``; a kiosk that comes back to B in
time gets none; B's view of presence sees a kiosk held by A; and a staff remote open sent
through B reaches the kiosk on A through the database (realtime/commands.py) and returns its ack.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import websockets
from sqlmodel import col, select
from websockets.asyncio.client import ClientConnection

from backend.models import Event, KioskCommand, KioskPresence
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.settings import Settings
from kiosk.assertion import sign_assertion
from realtime import presence
from realtime.relay import Hub, current_hub
from tests.live_server import LiveServer, live_server
from tests.processes import ServerProcess, WorkerProcess
from tests.realtime_helpers import recv
from tests.world import KioskIdentity, World, build_world, check

LEASE = 1.0
GRACE = 2.0


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, within: float = 30.0, every: float = 0.1
) -> Any:
    """The first truthy ``probe()`` within a generous deadline (never a timing assertion)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"not within {within}s (last: {last!r})")


async def lease_of(runtime: Runtime, kiosk_id: str) -> KioskPresence | None:
    async with runtime.db.session() as session:
        return await session.get(KioskPresence, kiosk_id)


async def presence_events(runtime: Runtime, kiosk_id: str) -> list[str]:
    async with runtime.db.session() as session:
        rows = await session.exec(
            select(Event.type)
            .where(
                Event.subject == f"kiosk:{kiosk_id}",
                col(Event.type).in_(presence.PRESENCE_TYPES),
            )
            .order_by(col(Event.id))
        )
        return list(rows.all())


async def kiosk_connect(ws_url: str, kiosk: KioskIdentity) -> ClientConnection:
    ws = await websockets.connect(ws_url + "/v1/kiosk/channel", open_timeout=10)
    await ws.send(json.dumps({"type": "auth", "assertion": sign_assertion(kiosk.key, kiosk.id)}))
    assert await recv(ws) == {"type": "ready", "kiosk_id": kiosk.id}
    return ws


# -- in process ----------------------------------------------------------------------------


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    # A long lease: the hub's own renew/sweep rounds stay out of the way; the tests call them.
    tuned = msgspec.structs.replace(
        settings, kiosk_presence_lease_seconds=300.0, kiosk_offline_grace_seconds=300.0
    )
    async with live_server(tuned) as live:
        yield live


async def test_the_lease_follows_the_channel(server: LiveServer) -> None:
    world = await build_world(server.http, server.settings)  # type: ignore[arg-type]
    kiosk = world.home.kiosk
    runtime = server.runtime
    ws = await kiosk_connect(server.ws_url, kiosk)
    hub = current_hub(runtime)
    lease = await eventually(lambda: lease_of(runtime, kiosk.id))
    assert lease.process_id == hub.process_id
    assert lease.property_id == world.home.property_id
    assert lease.lease_until > utcnow() + timedelta(seconds=200)
    await eventually(lambda: _events_are(runtime, kiosk.id, ["kiosk.online"]))

    # Renewal moves lease_until forward, in place.
    before = lease.lease_until
    await asyncio.sleep(0.01)
    await hub.renew_leases()
    renewed = await lease_of(runtime, kiosk.id)
    assert renewed is not None and renewed.lease_until > before
    assert renewed.connected_at == lease.connected_at

    # A lease lost while the socket stays open (a sweeper judged us dead) is put back, and the
    # kiosk is online again.
    assert await presence.settle_offline(
        runtime, kiosk.id, kiosk.property_id, utcnow() + timedelta(days=1)
    )
    assert await lease_of(runtime, kiosk.id) is None
    await hub.renew_leases()
    restored = await lease_of(runtime, kiosk.id)
    assert restored is not None and restored.process_id == hub.process_id
    assert await presence_events(runtime, kiosk.id) == [
        "kiosk.online",
        "kiosk.offline",
        "kiosk.online",
    ]

    # Disconnect: the lease is expired at once (not deleted: the sweeper settles it later).
    await ws.close()

    async def expired() -> bool:
        lease = await lease_of(runtime, kiosk.id)
        return lease is not None and lease.lease_until <= utcnow()

    await eventually(expired)
    assert not await hub.kiosk_online_anywhere(kiosk.id)


async def test_a_reconnect_elsewhere_takes_the_lease_over(server: LiveServer) -> None:
    world = await build_world(server.http, server.settings)  # type: ignore[arg-type]
    kiosk = world.home.kiosk
    runtime = server.runtime
    ws = await kiosk_connect(server.ws_url, kiosk)
    hub = current_hub(runtime)
    await eventually(lambda: lease_of(runtime, kiosk.id))
    # The kiosk reconnects to another process before this one notices the old socket is gone.
    await presence.claim(runtime, kiosk.id, kiosk.property_id, "elsewhere", utcnow())
    await hub.renew_leases()  # renews only our own rows: the other process's row stays its own
    lease = await lease_of(runtime, kiosk.id)
    assert lease is not None and lease.process_id == "elsewhere"
    await ws.close()
    await eventually(lambda: _not_connected_here(hub, kiosk.id))
    lease = await lease_of(runtime, kiosk.id)
    assert lease is not None and lease.process_id == "elsewhere"
    assert lease.lease_until > utcnow()  # our release did not touch it
    assert await hub.kiosk_online_anywhere(kiosk.id)  # held elsewhere, seen through the table


async def _not_connected_here(hub: Hub, kiosk_id: str) -> bool:
    return kiosk_id not in hub.kiosks


async def _events_are(runtime: Runtime, kiosk_id: str, expected: list[str]) -> bool:
    return await presence_events(runtime, kiosk_id) == expected


async def test_the_sweeper_records_offline_once_and_spares_reclaimed_leases(
    client: Any, world: World, settings: Settings
) -> None:
    first = Runtime.create(settings)
    second = Runtime.create(settings)
    try:
        home, other = world.home.kiosk, world.other.kiosk
        grace = timedelta(seconds=settings.kiosk_offline_grace_seconds)
        lease = timedelta(seconds=settings.kiosk_presence_lease_seconds)
        long_ago = utcnow() - grace - lease - timedelta(seconds=5)
        for kiosk in (home, other):
            await presence.record_presence(first, kiosk.id, kiosk.property_id, online=True)
        # home's process died long ago; other's holder is alive.
        await presence.claim(first, home.id, home.property_id, "dead", long_ago)
        await presence.claim(first, other.id, other.property_id, "alive", utcnow())

        counts = await asyncio.gather(presence.sweep(first), presence.sweep(second))
        assert sum(counts) == 1
        assert await presence_events(first, home.id) == ["kiosk.online", "kiosk.offline"]
        assert await lease_of(first, home.id) is None
        assert await presence_events(first, other.id) == ["kiosk.online"]
        assert await lease_of(first, other.id) is not None
        assert await presence.sweep(first) == 0  # nothing left to settle

        # A lapsed lease reclaimed (the kiosk came back to a live process) before the sweep.
        await presence.record_presence(first, home.id, home.property_id, online=True)
        await presence.claim(first, home.id, home.property_id, "dead", long_ago)
        await presence.claim(first, home.id, home.property_id, "back", utcnow())
        assert await presence.sweep(second) == 0
        lease_row = await lease_of(first, home.id)
        assert lease_row is not None and lease_row.process_id == "back"
        assert (await presence_events(first, home.id))[-1:] == ["kiosk.online"]

        # Lapsed, but for less than the grace period: not yet.
        await presence.claim(first, home.id, home.property_id, "recent", utcnow() - lease)
        assert await presence.sweep(second) == 0
        assert await lease_of(first, home.id) is not None
    finally:
        await first.db.dispose()
        await second.db.dispose()


# -- separate processes --------------------------------------------------------------------


@pytest.fixture
async def two_servers(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two ``concierge serve`` processes on the test's database, without Redis, with the
    background jobs on (as deployed by default: the realtime hub runs from startup)."""
    tuned = msgspec.structs.replace(
        settings,
        redis_url=None,
        background_jobs=True,
        kiosk_presence_lease_seconds=LEASE,
        kiosk_offline_grace_seconds=GRACE,
        realtime_poll_seconds=0.2,
        override_ack_timeout_seconds=2.0,
    )
    runtime = Runtime.create(tuned)  # creates the key file both processes share
    await runtime.db.dispose()
    a = await asyncio.to_thread(ServerProcess.start, tuned, log_dir=tmp_path, name="a")
    try:
        b = await asyncio.to_thread(ServerProcess.start, tuned, log_dir=tmp_path, name="b")
        try:
            yield a, b
        finally:
            await asyncio.to_thread(b.stop)
    finally:
        await asyncio.to_thread(a.stop)


async def staff_presence(http: httpx.AsyncClient, token: str, kiosk_id: str) -> list[str]:
    """The kiosk's presence events as staff read them through ``GET /v1/events``."""
    types: list[str] = []
    params: dict[str, Any] = {"after": 0, "limit": 200}
    while True:
        response = await http.get(
            "/v1/events", params=params, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        types += [
            item["type"]
            for item in body["items"]
            if item["type"] in presence.PRESENCE_TYPES and item["data"].get("kiosk_id") == kiosk_id
        ]
        if not body.get("next_cursor"):
            return types
        params = {"cursor": body["next_cursor"], "limit": 200}


async def settled() -> None:
    """Longer than a lease, the grace and a few sweep rounds: what would happen, has."""
    await asyncio.sleep(2 * (LEASE + GRACE) + 1.0)


@pytest.mark.slow
async def test_a_killed_server_s_kiosk_is_reported_offline_by_another(
    two_servers: tuple[ServerProcess, ServerProcess], settings: Settings
) -> None:
    a, b = two_servers
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http_b:
        world = await build_world(http_b, settings)  # type: ignore[arg-type]
        kiosk = world.home.kiosk
        token = world.home.people["staff"].access_token
        ws = await kiosk_connect(a.ws_url, kiosk)
        try:
            assert await eventually(lambda: _staff_sees(http_b, token, kiosk.id, ["kiosk.online"]))
            await asyncio.to_thread(a.kill)  # SIGKILL: no shutdown code runs on A
            offline = ["kiosk.online", "kiosk.offline"]
            assert await eventually(lambda: _staff_sees(http_b, token, kiosk.id, offline))
            await settled()
            assert await staff_presence(http_b, token, kiosk.id) == offline  # exactly once
        finally:
            await ws.close()


@pytest.mark.slow
async def test_a_kiosk_back_on_another_server_in_time_is_never_offline(
    two_servers: tuple[ServerProcess, ServerProcess], settings: Settings
) -> None:
    a, b = two_servers
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http_b:
        world = await build_world(http_b, settings)  # type: ignore[arg-type]
        home, other = world.home.kiosk, world.other.kiosk
        token = world.home.people["staff"].access_token
        other_token = world.other.people["staff"].access_token

        # B's own grace timer sees, through the lease table, a kiosk that moved from B to A.
        on_b = await kiosk_connect(b.ws_url, other)
        assert await eventually(
            lambda: _staff_sees(http_b, other_token, other.id, ["kiosk.online"])
        )
        await on_b.close()
        on_a_other = await kiosk_connect(a.ws_url, other)

        # A dies holding home; home comes back to B before the lease and grace run out.
        on_a = await kiosk_connect(a.ws_url, home)
        assert await eventually(lambda: _staff_sees(http_b, token, home.id, ["kiosk.online"]))
        await asyncio.to_thread(a.kill)
        on_b = await kiosk_connect(b.ws_url, home)
        try:
            await settled()
            assert await staff_presence(http_b, token, home.id) == ["kiosk.online"]
            # other was on A too: A died with it, it did not come back: offline, once.
            assert await staff_presence(http_b, other_token, other.id) == [
                "kiosk.online",
                "kiosk.offline",
            ]
        finally:
            for ws in (on_a, on_a_other, on_b):
                await ws.close()


@pytest.mark.slow
async def test_presence_on_one_server_sees_a_kiosk_held_by_another(
    two_servers: tuple[ServerProcess, ServerProcess], settings: Settings
) -> None:
    """Without Redis, a hub that does not hold the kiosk sees it through A's lease."""
    a, b = two_servers
    tuned = msgspec.structs.replace(settings, redis_url=None, kiosk_presence_lease_seconds=LEASE)
    elsewhere = Runtime.create(tuned)
    hub = Hub(elsewhere)  # a third process's hub (not started: nothing of its own)
    try:
        async with httpx.AsyncClient(base_url=b.url, timeout=30) as http_b:
            world = await build_world(http_b, settings)  # type: ignore[arg-type]
            kiosk = world.home.kiosk
            assert not await hub.kiosk_online_anywhere(kiosk.id)
            ws = await kiosk_connect(a.ws_url, kiosk)
            assert await eventually(lambda: hub.kiosk_online_anywhere(kiosk.id))
            # Still true several leases later: A keeps renewing.
            await asyncio.sleep(3 * LEASE)
            assert await hub.kiosk_online_anywhere(kiosk.id)
            await ws.close()
            assert await eventually(lambda: _negated(hub.kiosk_online_anywhere(kiosk.id)))
    finally:
        await hub.stop()
        await elsewhere.db.dispose()


async def _negated(value: Awaitable[bool]) -> bool:
    return not await value


async def _staff_sees(
    http: httpx.AsyncClient, token: str, kiosk_id: str, expected: list[str]
) -> bool:
    return await staff_presence(http, token, kiosk_id) == expected


@pytest.mark.slow
async def test_concierge_worker_sweeps_too(
    client: Any, world: World, settings: Settings, tmp_path: Path
) -> None:
    """With no server running the hub, ``concierge worker`` settles a dead process's lease."""
    tuned = msgspec.structs.replace(
        settings, kiosk_presence_lease_seconds=LEASE, kiosk_offline_grace_seconds=GRACE
    )
    runtime = Runtime.create(tuned)
    kiosk = world.home.kiosk
    try:
        await presence.record_presence(runtime, kiosk.id, kiosk.property_id, online=True)
        await presence.claim(runtime, kiosk.id, kiosk.property_id, "dead", utcnow())
        worker = await asyncio.to_thread(
            WorkerProcess.start, tuned, log_dir=tmp_path, name="worker", settle=0.5
        )
        try:
            offline = ["kiosk.online", "kiosk.offline"]
            try:
                await eventually(lambda: _events_are(runtime, kiosk.id, offline))
            except AssertionError:
                print(worker.log())
                raise
            assert await lease_of(runtime, kiosk.id) is None
        finally:
            assert await asyncio.to_thread(worker.stop) == 0
    finally:
        await runtime.db.dispose()


async def answer_commands(ws: ClientConnection, seen: list[dict[str, Any]]) -> None:
    """A kiosk agent: acknowledge every command (ok), answer pings."""
    async for raw in ws:
        frame = json.loads(raw)
        if frame["type"] == "command":
            seen.append(frame)
            await ws.send(
                json.dumps({"type": "ack", "id": frame["id"], "ok": True, "detail": "opened"})
            )
        elif frame["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))


@pytest.mark.slow
async def test_a_remote_open_through_one_server_reaches_a_kiosk_on_the_other(
    two_servers: tuple[ServerProcess, ServerProcess], settings: Settings
) -> None:
    """Without Redis, the command goes through the database to the lease holder, ack back."""
    a, b = two_servers
    runtime = Runtime.create(settings)
    try:
        async with httpx.AsyncClient(base_url=b.url, timeout=30) as http_b:
            world = await build_world(http_b, settings)  # type: ignore[arg-type]
            home = world.home
            staff = home.people["staff"]
            ws = await kiosk_connect(a.ws_url, home.kiosk)
            seen: list[dict[str, Any]] = []
            agent = asyncio.create_task(answer_commands(ws, seen))
            open_door = {"action": "open", "door_id": home.door_id, "reason": "locked out"}
            url = f"/v1/staff/kiosks/{home.kiosk.id}/commands"
            try:
                # kiosk.online is recorded after the lease is claimed: A holds it now.
                await eventually(
                    lambda: _staff_sees(http_b, staff.access_token, home.kiosk.id, ["kiosk.online"])
                )
                result = check(await http_b.post(url, json=open_door, headers=staff.headers))
                assert result["ok"] is True
                assert result["acknowledged"] is True
                assert result["detail"] == "opened"
                assert [(c["action"], c["door_id"]) for c in seen] == [("open", home.door_id)]
                assert seen[0]["id"] == result["command_id"]
            finally:
                agent.cancel()
            # Connected to A but silent: kiosk_offline after the ack timeout, not a hang.
            response = await http_b.post(url, json=open_door, headers=staff.headers)
            assert check(response, 409)["code"] == "kiosk_offline"
            # A dies: nobody to route to (first an unanswered row, then no lease at all).
            await asyncio.to_thread(a.kill)
            response = await http_b.post(url, json=open_door, headers=staff.headers)
            assert check(response, 409)["code"] == "kiosk_offline"
            await ws.close()
        async with runtime.db.session() as session:
            left = (await session.exec(select(KioskCommand.id))).all()
        assert left == []  # every sender removed its row
    finally:
        await runtime.db.dispose()
