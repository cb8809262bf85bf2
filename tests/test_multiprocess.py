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
from tests.fault_proxy import FaultProxy

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


# -- faults ----------------------------------------------------------------------------------


async def kiosk_client(kiosk: Any, url: str) -> Any:
    """A kiosk HTTP client bound to one server process (the kiosk's key signs each call)."""
    from kiosk.client import ServerClient

    return ServerClient(kiosk, async_http=httpx.AsyncClient(base_url=url, timeout=10.0))


async def deliver_via(client: Any, tracking: str) -> str:
    intake = await client.arequest(
        "POST",
        "/v1/kiosk/deliveries",
        json={"carrier": "UPS", "tracking": tracking, "unit": "4B", "size": "S"},
    )
    parcel_id: str = intake["parcel_id"]
    await client.arequest("POST", f"/v1/kiosk/deliveries/{parcel_id}/deposited", json={})
    return parcel_id


async def check_consistency(d: Deployment, trackings: list[str]) -> dict[str, str]:
    """Every tracking is exactly one deposited parcel; no compartment holds two; one event each."""
    rows = await sql(
        d,
        "SELECT tracking, id, state, compartment_id FROM parcel WHERE tracking = ANY($1)",
        trackings,
    )
    by_tracking: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_tracking.setdefault(row["tracking"], []).append(row)
    assert sorted(by_tracking) == sorted(trackings), set(trackings) - set(by_tracking)
    assert all(len(v) == 1 for v in by_tracking.values()), {
        k: len(v) for k, v in by_tracking.items() if len(v) != 1
    }
    assert {row["state"] for row in rows} == {"deposited"}, [dict(r) for r in rows]
    doubled = await sql(
        d,
        "SELECT compartment_id, count(*) AS n FROM parcel WHERE state IN ('assigned', 'deposited')"
        " GROUP BY compartment_id HAVING count(*) > 1",
    )
    assert doubled == [], [dict(r) for r in doubled]
    parcel_ids = {row["tracking"]: row["id"] for row in rows}
    events = await sql(
        d,
        "SELECT payload->>'parcel_id' AS parcel_id, count(*) AS n FROM event"
        " WHERE type = 'parcel.deposited' GROUP BY 1",
    )
    counts = {row["parcel_id"]: row["n"] for row in events}
    assert all(counts.get(pid) == 1 for pid in parcel_ids.values()), counts
    return parcel_ids


async def outbox_drained(d: Deployment) -> bool:
    """No notification still due: none pending, none being delivered (sent, failed or skipped
    are done)."""
    due = await sql(d, "SELECT count(*) AS n FROM outbox WHERE state IN ('pending', 'delivering')")
    return bool(due[0]["n"] == 0)


async def chain_valid(api: Api, staff: Phone, property_id: str) -> None:
    report = await api.call(
        "GET", f"/v1/staff/properties/{property_id}/audit/verify", headers=staff.headers
    )
    assert report.get("valid") is True, report


def test_server_killed_mid_load_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL one of two servers while deliveries flow through both.

    Server A also runs the push dispatcher with a short lease, so notifications it had claimed
    when it died are sent again by the worker once the lease runs out.
    """
    with deployment(tmp_path, outbox_lease_seconds=3.0) as d:
        a = d.server("server-a", background_jobs=True)
        b = d.server("server-b")
        d.worker()
        assert d.seed is not None
        total, kill_after = 60, 20

        async def scenario() -> None:
            api_b = Api(b.url)
            staff = await sign_in(api_b, d, "staff", device=False)
            await sign_in(api_b, d, "resident")  # a device with a push token: pushes happen
            kiosk = await enroll_kiosk(d, b.url)
            await add_compartments(api_b, staff, kiosk.config.kiosk_id, total)
            via = {"a": await kiosk_client(kiosk, a.url), "b": await kiosk_client(kiosk, b.url)}
            staff_ws = Realtime(b.ws_url, staff.access_token)
            await staff_ws.connect()
            trackings = [f"1ZKILL{i:04d}" for i in range(total)]
            done: list[str] = []
            failed: list[str] = []
            killed = asyncio.Event()

            async def one(i: int) -> None:
                server = "a" if i % 2 == 0 else "b"
                try:
                    await deliver_via(via[server], trackings[i])
                    done.append(trackings[i])
                except Exception:
                    failed.append(trackings[i])
                if len(done) >= kill_after and not killed.is_set():
                    killed.set()
                    await asyncio.to_thread(a.kill)

            queue = iter(range(total))

            async def lane() -> None:
                for i in queue:
                    await one(i)

            await asyncio.gather(*(lane() for _ in range(6)))
            assert killed.is_set()
            assert not a.alive()
            assert failed, "the kill should have interrupted some deliveries through A"
            # The kiosk retries what failed, through the surviving server: same tracking at the
            # same kiosk answers the same parcel, and deposited is idempotent.
            for tracking in failed:
                await deliver_via(via["b"], tracking)
            await asyncio.to_thread(a.restart)
            parcel_ids = await check_consistency(d, trackings)

            # Every committed parcel.deposited reached the staff websocket on B, once.
            def seen() -> set[str]:
                return {
                    e["data"]["parcel_id"]
                    for e in staff_ws.events
                    if e["type"] == "parcel.deposited"
                }

            await eventually(lambda: asyncio.sleep(0, set(parcel_ids.values()) <= seen()))
            ids = [int(e["id"]) for e in staff_ws.events]
            assert ids == sorted(set(ids)), "events repeated or out of order"
            # The outbox resumes: nothing stays pending, every parcel was pushed.
            await eventually(lambda: outbox_drained(d), within=45)
            pushed = json.dumps(pushes(d))
            assert all(pid in pushed for pid in parcel_ids.values())
            await chain_valid(api_b, staff, d.seed.property_id)  # type: ignore[union-attr]
            await staff_ws.close()
            for client in via.values():
                await client.async_http.aclose()
            await api_b.close()

        try:
            asyncio.run(scenario())
        except BaseException:
            print(d.logs())
            raise


def test_postgres_outage_reports_not_ready_and_recovers(tmp_path: Path) -> None:
    """Server A reaches PostgreSQL through a fault proxy; B goes direct and keeps working."""
    with FaultProxy(PG_HOST, PG_PORT) as proxy, deployment(tmp_path) as d:
        a = d.server("server-a", database_url=pg_url(d.database, port=proxy.port))
        b = d.server("server-b")
        assert d.seed is not None

        async def scenario() -> None:
            api_a, api_b = Api(a.url), Api(b.url)
            staff = await sign_in(api_b, d, "staff", device=False)
            kiosk = await enroll_kiosk(d, b.url)
            via_a, via_b = await kiosk_client(kiosk, a.url), await kiosk_client(kiosk, b.url)
            ws = Realtime(a.ws_url, staff.access_token)
            await ws.connect()
            first = await deliver_via(via_a, "1ZPG0001")
            await ws.wait_for("parcel.deposited", lambda e: e["data"]["parcel_id"] == first)

            proxy.outage()
            report = await eventually(
                lambda: asyncio.to_thread(lambda: (r := a.ready()) and r[0] == 503 and r[1])
            )
            assert report["checks"]["database"] == "unavailable", report
            # A request that needs the database fails cleanly: a problem document, never a trace.
            response = await api_a.client.get("/v1/me", headers=staff.headers)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "Traceback" not in response.text
            assert "asyncpg" not in response.text
            # Meanwhile B (direct connection) keeps taking deliveries.
            during = [await deliver_via(via_b, f"1ZPG{i:04d}") for i in range(2, 5)]

            proxy.resume()
            await eventually(lambda: asyncio.to_thread(lambda: (r := a.ready()) and r[0] == 200))
            # A's websocket client gets what was committed meanwhile, in order, without gaps.
            for parcel_id in during:
                await ws.wait_for(
                    "parcel.deposited", lambda e, p=parcel_id: e["data"]["parcel_id"] == p
                )
            after = await deliver_via(via_a, "1ZPG0009")
            await ws.wait_for("parcel.deposited", lambda e: e["data"]["parcel_id"] == after)
            ids = [int(e["id"]) for e in ws.events]
            assert ids == sorted(set(ids))
            await check_consistency(d, ["1ZPG0001", "1ZPG0002", "1ZPG0003", "1ZPG0004", "1ZPG0009"])
            await ws.close()
            for client in (via_a, via_b):
                await client.async_http.aclose()
            await api_a.close()
            await api_b.close()

        try:
            asyncio.run(scenario())
        except BaseException:
            print(d.logs())
            raise


def test_redis_outage_reports_not_ready_and_recovers(tmp_path: Path) -> None:
    """Both servers reach Redis through a fault proxy; events keep flowing from the table."""
    with FaultProxy(REDIS_HOST, REDIS_PORT) as proxy, deployment(tmp_path) as d:
        redis_url = f"redis://127.0.0.1:{proxy.port}/0"
        a = d.server("server-a", redis_url=redis_url)
        b = d.server("server-b", redis_url=redis_url)

        async def scenario() -> None:
            api_b = Api(b.url)
            staff = await sign_in(api_b, d, "staff", device=False)
            kiosk = await enroll_kiosk(d, a.url)
            via_a = await kiosk_client(kiosk, a.url)
            ws = Realtime(b.ws_url, staff.access_token)
            await ws.connect()
            first = await deliver_via(via_a, "1ZRD0001")
            await ws.wait_for("parcel.deposited", lambda e: e["data"]["parcel_id"] == first)

            proxy.outage()
            for server in (a, b):
                report = await eventually(
                    lambda s=server: asyncio.to_thread(
                        lambda: (r := s.ready()) and r[0] == 503 and r[1]
                    )
                )
                assert report["checks"].get("redis") == "unavailable", report
            # Events produced on A still reach B's websocket (from the Event table).
            during = [await deliver_via(via_a, f"1ZRD{i:04d}") for i in range(2, 4)]
            for parcel_id in during:
                await ws.wait_for(
                    "parcel.deposited", lambda e, p=parcel_id: e["data"]["parcel_id"] == p
                )

            proxy.resume()
            for server in (a, b):
                await eventually(
                    lambda s=server: asyncio.to_thread(lambda: (r := s.ready()) and r[0] == 200),
                    within=40,
                )
            after = await deliver_via(via_a, "1ZRD0009")
            await ws.wait_for("parcel.deposited", lambda e: e["data"]["parcel_id"] == after)
            ids = [int(e["id"]) for e in ws.events]
            assert ids == sorted(set(ids))
            await check_consistency(d, ["1ZRD0001", "1ZRD0002", "1ZRD0003", "1ZRD0009"])
            await ws.close()
            await via_a.async_http.aclose()
            await api_b.close()

        try:
            asyncio.run(scenario())
        except BaseException:
            print(d.logs())
            raise
