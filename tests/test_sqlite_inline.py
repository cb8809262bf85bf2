"""SQLite runs on the event loop: another process's write lock is waited for without blocking it.

A real second process takes the database file's write lock (``BEGIN IMMEDIATE``) and holds it.
Meanwhile a write request through a real server must wait (not fail, not block the loop: an
endpoint without database work still answers), finish once the lock is released, and answer 503
with a problem document if the lock is held past the wait limit.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from backend import db
from tests.conftest import make_settings
from tests.databases import sqlite_url
from tests.live_server import LiveServer, live_server
from tests.world import World, build_world

LIVENESS_SECONDS = 3.0

HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
print("released", flush=True)
"""


class LockHolder:
    """Another process holding the SQLite file's write lock until ``release``."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def database_path(tmp_path: Path, sqlite_template: Path) -> Path:
    url = sqlite_url(tmp_path)
    path = Path(make_url(url).database or "")
    path.write_bytes(sqlite_template.read_bytes())
    return path


async def _world(server: LiveServer) -> World:
    return await build_world(server.http, server.settings)


async def _create_unit(server: LiveServer, world: World, label: str) -> int:
    response = await server.http.post(
        f"/v1/staff/properties/{world.home.property_id}/units",
        json={"label": label},
        headers=world.admin.headers,
    )
    return response.status_code


async def test_a_write_waits_for_another_process_without_blocking_the_loop(
    database_path: Path, tmp_path: Path
) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{database_path}", tmp_path / "var")
    async with live_server(settings) as server:
        world = await _world(server)
        holder = await asyncio.to_thread(LockHolder, str(database_path))
        try:
            write = asyncio.create_task(_create_unit(server, world, "W-1"))
            await asyncio.sleep(0.3)
            # The loop is free: requests without database work are answered meanwhile. (A
            # loop blocked in SQLite's busy handler, seconds at a time, would miss the bound:
            # a liveness bound, generous for any machine, not a speed target.)
            for _ in range(5):
                live = await asyncio.wait_for(server.http.get("/health/live"), LIVENESS_SECONDS)
                assert live.status_code == 200
            assert not write.done(), "the write should still be waiting for the lock"
        finally:
            await asyncio.to_thread(holder.release)
        assert await asyncio.wait_for(write, 30) == 201


async def test_a_lock_held_past_the_limit_answers_503(
    database_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{database_path}", tmp_path / "var")
    async with live_server(settings) as server:
        world = await _world(server)
        monkeypatch.setattr(db, "WRITE_LOCK_TIMEOUT_SECONDS", 0.5)
        holder = await asyncio.to_thread(LockHolder, str(database_path))
        try:
            response = await server.http.post(
                f"/v1/staff/properties/{world.home.property_id}/units",
                json={"label": "W-2"},
                headers=world.admin.headers,
            )
        finally:
            await asyncio.to_thread(holder.release)
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "service_unavailable"
        # Released, the same write goes through.
        assert await _create_unit(server, world, "W-2") == 201
