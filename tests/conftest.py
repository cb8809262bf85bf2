"""Shared fixtures: settings over real databases, a client on a fresh app, a seeded world.

Backend-dependent fixtures are parametrised ``sqlite`` / ``postgres``; the PostgreSQL variant
is skipped, with the reason printed in the summary (``-ra``), when the server is unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from backend.app import create_app
from backend.migrate import upgrade
from backend.settings import Settings
from tests.databases import PG_HOST, PG_PORT, PG_SKIP, postgres_database, reachable, sqlite_url
from tests.world import World, build_world

PG_UP = reachable(PG_HOST, PG_PORT)


def make_settings(database_url: str, var_dir: Path, **overrides: object) -> Settings:
    """Test settings: fast password hashing, a per-test var dir and key-encryption key."""
    values: dict[str, object] = {
        "database_url": database_url,
        "var_dir": str(var_dir),
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 1024,
        "background_jobs": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
        await asyncio.to_thread(upgrade, url)
        yield url
        return
    if not PG_UP:
        pytest.skip(PG_SKIP)
    async with postgres_database() as url:
        await asyncio.to_thread(upgrade, url)
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path / "var")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
async def world(client: AsyncTestClient, settings: Settings) -> World:  # type: ignore[type-arg]
    return await build_world(client, settings)
