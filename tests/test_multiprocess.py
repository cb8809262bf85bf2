"""The production setup for real: several server processes and a push worker on PostgreSQL + Redis.

Every test starts its own processes (``concierge serve``, ``concierge worker``) on a fresh
PostgreSQL database with its own Redis channel prefix, and drives them only as clients do:
HTTP, websockets, the kiosk package. Faults are real too: a server SIGKILLed under load, and
PostgreSQL or Redis cut off through a TCP fault proxy (the shared servers are never stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from backend.story import Api, Phone, Realtime
from tests.databases import PG_HOST, PG_PORT, PG_SKIP, REDIS_HOST, REDIS_PORT, REDIS_SKIP, reachable
from tests.deployment import Deployment, deployment, pg_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.skipif(not reachable(PG_HOST, PG_PORT), reason=PG_SKIP),
    pytest.mark.skipif(not reachable(REDIS_HOST, REDIS_PORT), reason=REDIS_SKIP),
]


# -- helpers -------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, within: float = 20.0, every: float = 0.2
) -> Any:
    """The first truthy result of ``probe()`` within ``within`` seconds (else AssertionError)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError, asyncpg.PostgresError):
            last = await probe()
            if last:
                return last
        await asyncio.sleep(every)
    raise AssertionError(f"not within {within}s (last: {last!r})")


async def sql(d: Deployment, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url(d.database).replace("postgresql+asyncpg", "postgresql"))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def enroll_kiosk(d: Deployment, server_url: str, name: str = "kiosk") -> Any:
    from kiosk import agent
    from kiosk.client import ServerClient

    assert d.seed is not None
    kiosk = await agent.enroll(server_url, d.seed.enrollment_code, d.root / name)
    await agent.sync(kiosk, ServerClient(kiosk))
    return kiosk


async def sign_in(api: Api, d: Deployment, role: str, *, device: bool = True) -> Phone:
    assert d.seed is not None
    phone = Phone(api, *d.seed.accounts[role])
    await phone.sign_in()
    if device:
        await phone.register_device()
    return phone


async def deliver(kiosk: Any, tracking: str, unit: str = "4B", size: str = "S") -> str:
    from kiosk.client import ServerClient

    client = ServerClient(kiosk)
    intake = await client.arequest(
        "POST",
        "/v1/kiosk/deliveries",
        json={"carrier": "UPS", "tracking": tracking, "unit": unit, "size": size},
    )
    parcel_id: str = intake["parcel_id"]
    await client.arequest("POST", f"/v1/kiosk/deliveries/{parcel_id}/deposited", json={})
    return parcel_id


def at_server(kiosk: Any, url: str) -> Any:
    """The same kiosk state talking to another server process (same database)."""
    kiosk.config = type(kiosk.config)(
        server_url=url, kiosk_id=kiosk.config.kiosk_id, property_id=kiosk.config.property_id
    )
    return kiosk


async def add_compartments(api: Api, staff: Phone, kiosk_id: str, count: int) -> None:
    for i in range(count):
        await api.call(
            "POST",
            f"/v1/staff/kiosks/{kiosk_id}/compartments",
            json={"label": f"L{i:03d}", "size": "S", "purpose": "parcel"},
            headers=staff.headers,
        )


def pushes(d: Deployment) -> list[dict[str, Any]]:
    try:
        lines = d.push_log.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


# -- the journey across processes ------------------------------------------------------------


def test_journey_across_two_servers_and_a_worker(tmp_path: Path) -> None:
    """Deposit through process A, websocket on process B, push through the worker.

    Polling of the Event table is slowed to 60 s, so an event reaching B within seconds
    crossed processes through Redis.
    """
    with deployment(tmp_path, realtime_poll_seconds=60.0) as d:
        a = d.server("server-a")
        b = d.server("server-b")
        d.worker()

        async def scenario() -> None:
            from kiosk import agent
            from kiosk.client import ServerClient

            api_b = Api(b.url)
            kiosk = await enroll_kiosk(d, a.url)
            resident = await sign_in(api_b, d, "resident")
            ws = Realtime(b.ws_url, resident.access_token)
            await ws.connect()
            try:
                parcel_id = await deliver(kiosk, "1ZMULTI0001")
                event = await ws.wait_for(
                    "parcel.deposited", lambda e: e["data"].get("parcel_id") == parcel_id, within=10
                )
                assert event["property_id"] == kiosk.config.property_id

                pushed = await eventually(
                    lambda: asyncio.to_thread(
                        lambda: [p for p in pushes(d) if parcel_id in json.dumps(p)]
                    )
                )
                assert len(pushed) == 1, pushed

                credential = (await resident.credentials(parcel_id=parcel_id))[0]
                decision = kiosk.present(resident.present(credential))
                assert decision.granted, decision
                await agent.upload(kiosk, ServerClient(kiosk))
                await ws.wait_for(
                    "parcel.picked_up", lambda e: e["data"].get("parcel_id") == parcel_id, within=10
                )
                rows = await sql(d, "SELECT state FROM parcel WHERE id = $1", parcel_id)
                assert [r["state"] for r in rows] == ["picked_up"]
            finally:
                await ws.close()
                await api_b.close()

        try:
            asyncio.run(scenario())
        except BaseException:
            print(d.logs())
            raise
