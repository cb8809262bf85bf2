"""The test infrastructure itself: real server processes and the TCP fault proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.databases import PG_HOST, PG_PORT, PG_SKIP, reachable, sqlite_url
from tests.fault_proxy import FaultProxy
from tests.processes import ServerProcess, run_cli


@pytest.mark.slow
def test_server_process_starts_ready_and_stops(tmp_path: Path) -> None:
    env = {"database_url": sqlite_url(tmp_path), "var_dir": tmp_path / "var"}
    assert run_cli(["migrate"], env).returncode == 0
    with ServerProcess.start(env, log_dir=tmp_path) as server:
        body = server.wait_ready()
        assert body["checks"]["database"] == "ok"
        assert httpx.get(server.url + "/health/live").json()["status"] == "ok"
        server.kill()
        assert not server.alive()
        assert server.ready() is None
        server.restart()
        assert server.ready() is not None
    assert not server.alive()


@pytest.mark.postgres
def test_fault_proxy_cuts_refuses_and_resumes() -> None:
    if not reachable(PG_HOST, PG_PORT):
        pytest.skip(PG_SKIP)

    async def scenario(port: int, proxy: FaultProxy) -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database="test", timeout=5
        )
        assert await conn.fetchval("SELECT 1") == 1
        assert proxy.outage() == 1
        with pytest.raises((asyncpg.PostgresError, ConnectionError, OSError, asyncio.TimeoutError)):
            await asyncio.wait_for(conn.fetchval("SELECT 1"), 5)
        with pytest.raises((ConnectionError, OSError, asyncpg.PostgresError, asyncio.TimeoutError)):
            await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", database="test", timeout=5
            )
        proxy.resume()
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database="test", timeout=5
        )
        assert await conn.fetchval("SELECT 2") == 2
        await conn.close()

    with FaultProxy(PG_HOST, PG_PORT) as proxy:
        asyncio.run(scenario(proxy.port, proxy))
        assert proxy.refused >= 1
