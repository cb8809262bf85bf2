"""PostgreSQL connections per process are bounded by ``CONCIERGE_DATABASE_POOL_SIZE``: a burst
of requests waits for pooled connections instead of opening (and closing) more. Counted where
the connections are made: a TCP proxy between the app and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from backend.app import create_app
from tests.conftest import PG_UP, make_settings
from tests.databases import PG_HOST, PG_PORT, PG_SKIP, postgres_database
from tests.fault_proxy import FaultProxy
from tests.world import check, make_admin

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(not PG_UP, reason=PG_SKIP)]

POOL_SIZE = 2
BURST = 24


async def test_a_burst_waits_for_pooled_connections_instead_of_opening_more(
    postgres_template: str, tmp_path: Path
) -> None:
    async with postgres_database(template=postgres_template) as direct_url:
        with FaultProxy(PG_HOST, PG_PORT) as proxy:
            url = direct_url.replace(f":{PG_PORT}/", f":{proxy.port}/")
            settings = make_settings(url, tmp_path / "var", database_pool_size=POOL_SIZE)
            app = create_app(settings)
            transport = httpx.ASGITransport(app=app)
            async with (
                app.lifespan(),
                httpx.AsyncClient(transport=transport, base_url="http://t") as client,
            ):
                admin = await make_admin(client, settings)  # type: ignore[arg-type]  # (its own short-lived engine)
                before = proxy.accepted
                responses = await asyncio.gather(
                    *(client.get("/v1/me", headers=admin.headers) for _ in range(BURST))
                )
                opened = proxy.accepted - before

    assert all(check(r)["email"] == admin.email for r in responses)
    assert opened <= POOL_SIZE, f"{opened} connections opened for a burst of {BURST} requests"
