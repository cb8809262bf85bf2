"""WS /v1/kiosk/channel: a kiosk holds the channel, staff commands reach it and are acknowledged;
presence (kiosk.online / kiosk.offline after the grace period) reaches staff."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from backend import errors
from backend.settings import Settings
from kiosk.assertion import sign_assertion
from realtime.kiosk_channel import send_command
from tests.live_server import LiveServer, live_server
from tests.realtime_helpers import close_code, connect, produce, recv, recv_event
from tests.world import KioskIdentity, World, build_world, check

GRACE = 1.0


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    tuned = msgspec.structs.replace(
        settings, kiosk_offline_grace_seconds=GRACE, ws_auth_timeout_seconds=1.0
    )
    async with live_server(tuned) as live:
        yield live


@pytest.fixture
async def world(server: LiveServer) -> World:
    return await build_world(server.http, server.settings)  # type: ignore[arg-type]


async def kiosk_connect(server: LiveServer, kiosk: KioskIdentity) -> ClientConnection:
    ws = await websockets.connect(server.ws_url + "/v1/kiosk/channel", open_timeout=10)
    await ws.send(json.dumps({"type": "auth", "assertion": sign_assertion(kiosk.key, kiosk.id)}))
    ready = await recv(ws)
    assert ready == {"type": "ready", "kiosk_id": kiosk.id}
    return ws


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


async def test_staff_command_reaches_the_kiosk_and_is_acknowledged(
    server: LiveServer, world: World
) -> None:
    home = world.home
    staff = home.people["staff"]
    ws = await kiosk_connect(server, home.kiosk)
    seen: list[dict[str, Any]] = []
    agent = asyncio.create_task(answer_commands(ws, seen))
    try:
        result = check(
            await server.http.post(
                f"/v1/staff/kiosks/{home.kiosk.id}/commands",
                json={"action": "open", "door_id": home.door_id, "reason": "locked-out resident"},
                headers=staff.headers,
            )
        )
        assert result["ok"] is True
        assert result["acknowledged"] is True
        assert result["detail"] == "opened"
        assert len(seen) == 1
        command = seen[0]
        assert command["action"] == "open"
        assert command["door_id"] == home.door_id
        assert command["reason"] == "locked-out resident"
        assert command["id"] == result["command_id"]

        ack = await send_command(server.runtime, home.kiosk.id, {"action": "sync"}, 5)
        assert ack["ok"] is True
        assert seen[-1]["action"] == "sync"
        assert ack["id"] == seen[-1]["id"]
    finally:
        agent.cancel()
        await ws.close()


async def test_offline_kiosk_and_silent_kiosk_are_kiosk_offline(
    server: LiveServer, world: World
) -> None:
    home = world.home
    staff = home.people["staff"]
    response = await server.http.post(
        f"/v1/staff/kiosks/{home.kiosk.id}/commands",
        json={"action": "open", "door_id": home.door_id, "reason": "test"},
        headers=staff.headers,
    )
    assert check(response, 409)["code"] == "kiosk_offline"
    with pytest.raises(errors.KioskOffline):
        await send_command(server.runtime, home.kiosk.id, {"action": "sync"}, 1)
    # Connected but never acknowledging: kiosk_offline after the timeout, not a hang.
    ws = await kiosk_connect(server, home.kiosk)
    with pytest.raises(errors.KioskOffline):
        await send_command(server.runtime, home.kiosk.id, {"action": "sync"}, 0.5)
    assert (await recv(ws))["type"] == "command"  # it was delivered
    await ws.close()


async def test_bad_assertions_and_replaced_connections(server: LiveServer, world: World) -> None:
    kiosk = world.home.kiosk
    ws = await websockets.connect(server.ws_url + "/v1/kiosk/channel", open_timeout=10)
    await ws.send(json.dumps({"type": "auth", "assertion": "nope"}))
    assert await close_code(ws) == 4013
    # The assertion of another kiosk's key
    forged = sign_assertion(world.other.kiosk.key, kiosk.id)
    ws = await websockets.connect(server.ws_url + "/v1/kiosk/channel", open_timeout=10)
    await ws.send(json.dumps({"type": "auth", "assertion": forged}))
    assert await close_code(ws) == 4013
    # A replayed assertion
    assertion = sign_assertion(kiosk.key, kiosk.id)
    first = await websockets.connect(server.ws_url + "/v1/kiosk/channel", open_timeout=10)
    await first.send(json.dumps({"type": "auth", "assertion": assertion}))
    assert (await recv(first))["type"] == "ready"
    replay = await websockets.connect(server.ws_url + "/v1/kiosk/channel", open_timeout=10)
    await replay.send(json.dumps({"type": "auth", "assertion": assertion}))
    assert await close_code(replay) == 4013
    # No auth frame at all
    silent = await websockets.connect(server.ws_url + "/v1/kiosk/channel", open_timeout=10)
    assert await close_code(silent) == 4008
    # A second connection of the same kiosk replaces the first
    second = await kiosk_connect(server, kiosk)
    assert await close_code(first) == 4012
    await second.send(json.dumps({"type": "ping"}))
    assert (await recv(second))["type"] == "pong"
    await second.close()


async def test_presence_events_reach_staff_with_a_grace_period(
    server: LiveServer, world: World
) -> None:
    home = world.home
    staff_ws, _ = await connect(server.ws_url, home.people["staff"].access_token)
    resident_ws, _ = await connect(server.ws_url, home.people["resident"].access_token)

    kiosk_ws = await kiosk_connect(server, home.kiosk)
    online = await recv_event(staff_ws)
    assert online["type"] == "kiosk.online"
    assert online["data"]["kiosk_id"] == home.kiosk.id

    # A blip shorter than the grace period: no offline, no second online.
    await kiosk_ws.close()
    kiosk_ws = await kiosk_connect(server, home.kiosk)
    await asyncio.sleep(GRACE + 1.0)
    marker = await produce(server.runtime, home.property_id, "test.marker")
    assert int((await recv_event(staff_ws))["id"]) == marker

    await kiosk_ws.close()
    offline = await recv_event(staff_ws, timeout=GRACE + 10)
    assert offline["type"] == "kiosk.offline"
    assert offline["data"]["kiosk_id"] == home.kiosk.id

    # Residents do not see kiosk presence.
    sentinel = await produce(
        server.runtime, home.property_id, "test.sentinel", user_id=home.people["resident"].user_id
    )
    assert int((await recv_event(resident_ws))["id"]) == sentinel
    await staff_ws.close()
    await resident_ws.close()
