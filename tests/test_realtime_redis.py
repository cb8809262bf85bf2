"""Scale-out through Redis: two real server processes, one Redis at 127.0.0.1:6379.

An event committed by process A reaches a websocket client connected to process B (with table
polling effectively off, so only Redis can carry it in time), and a kiosk command sent through
process A reaches a kiosk connected to process B and comes back acknowledged. When Redis goes
away, readiness says so, clients keep getting events (the table is the source of truth), and the
bridge reconnects. Every test uses its own channel prefix so parallel runs never collide.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from backend.runtime import Runtime
from backend.settings import Settings
from kiosk.assertion import sign_assertion
from tests.databases import REDIS_HOST, REDIS_PORT, REDIS_SKIP, reachable
from tests.fault_proxy import FaultProxy
from tests.live_server import live_server
from tests.processes import ServerProcess
from tests.realtime_helpers import connect, produce, recv, recv_event
from tests.world import build_world, check

pytestmark = [pytest.mark.redis]
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture
def redis_settings(settings: Settings) -> Settings:
    if not reachable(REDIS_HOST, REDIS_PORT):
        pytest.skip(REDIS_SKIP)
    return msgspec.structs.replace(
        settings,
        redis_url=REDIS_URL,
        redis_channel_prefix=f"test-{secrets.token_hex(6)}",
    )


@pytest.fixture
async def two_servers(
    redis_settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    tuned = msgspec.structs.replace(redis_settings, realtime_poll_seconds=3600.0)
    rt = Runtime.create(tuned)  # creates the key file both processes share
    await rt.db.dispose()
    a = await asyncio.to_thread(ServerProcess.start, tuned, log_dir=tmp_path, name="a")
    try:
        b = await asyncio.to_thread(ServerProcess.start, tuned, log_dir=tmp_path, name="b")
        try:
            yield a, b
        finally:
            await asyncio.to_thread(b.stop)
    finally:
        await asyncio.to_thread(a.stop)


@pytest.mark.slow
async def test_event_from_process_a_reaches_client_on_b_and_commands_route_back(
    two_servers: tuple[ServerProcess, ServerProcess], redis_settings: Settings
) -> None:
    a, b = two_servers
    assert a.ready() == (200, {"status": "ok", "checks": {"database": "ok", "redis": "ok"}})
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as http_a:
        world = await build_world(http_a, redis_settings)  # type: ignore[arg-type]
        home = world.home
        staff = home.people["staff"]
        ws, _ = await connect(b.ws_url, staff.access_token)
        response = await http_a.post(
            f"/v1/staff/properties/{home.property_id}/invitations",
            json={"email": "new@example.test", "role": "resident", "unit_id": home.units["1A"]},
            headers=staff.headers,
        )
        check(response, 201)
        frame = await recv_event(ws, timeout=10)
        assert frame["type"] == "member.invited"
        assert frame["property_id"] == home.property_id
        await ws.close()

        # The kiosk holds its channel on B; staff send the command through A.
        kiosk = await websockets.connect(b.ws_url + "/v1/kiosk/channel", open_timeout=10)
        await kiosk.send(
            json.dumps({"type": "auth", "assertion": sign_assertion(home.kiosk.key, home.kiosk.id)})
        )
        assert (await recv(kiosk))["type"] == "ready"
        seen: list[dict[str, Any]] = []

        async def agent() -> None:
            async for raw in kiosk:
                command = json.loads(raw)
                if command["type"] == "command":
                    seen.append(command)
                    await kiosk.send(
                        json.dumps(
                            {"type": "ack", "id": command["id"], "ok": True, "detail": "done"}
                        )
                    )

        task = asyncio.create_task(agent())
        try:
            result = check(
                await http_a.post(
                    f"/v1/staff/kiosks/{home.kiosk.id}/commands",
                    json={"action": "open", "door_id": home.door_id, "reason": "delivery help"},
                    headers=staff.headers,
                )
            )
            assert result["ok"] is True
            assert result["detail"] == "done"
            assert [c["door_id"] for c in seen] == [home.door_id]
        finally:
            task.cancel()
            await kiosk.close()


async def test_redis_outage_readiness_and_no_lost_events(
    redis_settings: Settings, tmp_path: Path
) -> None:
    with FaultProxy(REDIS_HOST, REDIS_PORT) as proxy:
        tuned = msgspec.structs.replace(
            redis_settings,
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            realtime_poll_seconds=0.2,
        )
        async with live_server(tuned) as server:
            world = await build_world(server.http, tuned)  # type: ignore[arg-type]
            home = world.home
            ws, _ = await connect(server.ws_url, home.people["staff"].access_token)
            assert check(await server.http.get("/health/ready"))["checks"]["redis"] == "ok"
            # Another process commits (a separate runtime: this server hears of it only
            # through Redis or the table).
            elsewhere = Runtime.create(tuned)
            try:
                proxy.outage()
                ready = await server.http.get("/health/ready")
                assert ready.status_code == 503
                assert ready.json()["checks"]["redis"] == "unavailable"
                during = await produce(elsewhere, home.property_id, "test.during_outage")
                assert int((await recv_event(ws))["id"]) == during
                proxy.resume()
                for _ in range(100):
                    if (await server.http.get("/health/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail("readiness never recovered after Redis came back")
                after = await produce(elsewhere, home.property_id, "test.after_outage")
                assert int((await recv_event(ws))["id"]) == after
            finally:
                await elsewhere.db.dispose()
            await ws.close()
