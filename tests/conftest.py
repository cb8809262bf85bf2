"""Shared fixtures: settings over real databases, a client on a fresh app, a seeded world.

Backend-dependent fixtures are parametrised ``sqlite`` / ``postgres``; the PostgreSQL variant
is skipped, with the reason printed in the summary (``-ra``), when the server is unreachable.

Each test gets its own database, copied from a template migrated once per test process (a file
copy for SQLite, ``CREATE DATABASE ... TEMPLATE`` for PostgreSQL). The PostgreSQL variants run
for the modules whose behaviour depends on the database (locking, ordering, constraints,
concurrency: ``POSTGRES_MODULES``); ``TEST_ALL_DATABASES=1`` (``make test-all``) runs every
module on both, and the run's header and summary say which was chosen.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from backend.app import create_app
from backend.migrate import upgrade
from backend.settings import Settings
from tests.app_client import AppClient
from tests.databases import (
    PG_HOST,
    PG_PORT,
    PG_SKIP,
    create_postgres_database,
    drop_postgres_database,
    postgres_database,
    postgres_url,
    reachable,
    sqlite_url,
)
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


ALL_DATABASES = os.environ.get("TEST_ALL_DATABASES") == "1"
POSTGRES_MODULES = {
    "test_accounts",
    "test_credential_journey",
    "test_credentials_server",
    "test_journal",
    "test_keys_custody",
    "test_kiosk_offline_day",
    "test_kiosk_presence",
    "test_migrations",
    "test_parcels_journal",
    "test_parcels_lifecycle",
    "test_parcels_security",
    "test_push_fcm",
    "test_push_worker",
    "test_realtime_kiosk_channel",
    "test_realtime_ordering",
    "test_realtime_redis",
    "test_realtime_websocket",
    "test_revocations",
    "test_vendor_visit",
}


def pytest_report_header() -> str:
    scope = (
        "every module"
        if ALL_DATABASES
        else "database-sensitive modules (TEST_ALL_DATABASES=1: all)"
    )
    state = (
        f"PostgreSQL variants: {scope}"
        if PG_UP
        else "PostgreSQL unreachable: its variants are SKIPPED"
    )
    return state


def _name_schemathesis_items(items: list[pytest.Item]) -> None:
    """schemathesis 4.32 names its items ``test[GET /path]``, but pytest 9 builds node ids from
    structured parts and drops that suffix: every operation would share one node id, and
    xdist would run only one of them. Give each item its operation back in the id."""
    from _pytest.nodeid import NodeId

    for item in items:
        label = getattr(item, "operation_label", None)
        node_id = getattr(item, "_id", None)
        if label and isinstance(node_id, NodeId) and node_id.params is None:
            item._id = NodeId(path=node_id.path, names=node_id.names, params=label)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _name_schemathesis_items(items)
    if ALL_DATABASES:
        return
    keep, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("database_url") == "postgres"
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""  # type: ignore[attr-defined]
        (dropped if on_postgres and module not in POSTGRES_MODULES else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _in_thread(function: Any, *args: Any) -> Any:
    """Run blocking setup that uses asyncio.run (Alembic) outside the test's running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template")
    _in_thread(upgrade, sqlite_url(directory))
    return directory / "concierge.db"


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated database to copy; created once per test process, dropped at the end."""
    name = _in_thread(asyncio.run, create_postgres_database())
    try:
        _in_thread(upgrade, postgres_url(name))
        yield name
    finally:
        _in_thread(asyncio.run, drop_postgres_database(name))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, tmp_path / "concierge.db")
        yield sqlite_url(tmp_path)
        return
    if not PG_UP:
        pytest.skip(PG_SKIP)
    async with postgres_database(template=request.getfixturevalue("postgres_template")) as url:
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path / "var")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AppClient]:
    async with AppClient(app=create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
async def world(client: AppClient, settings: Settings) -> World:
    return await build_world(client, settings)
