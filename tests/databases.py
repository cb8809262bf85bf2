"""Real databases for tests: a fresh SQLite file, or a fresh PostgreSQL database that is dropped after."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_SKIP = "PostgreSQL not reachable at 127.0.0.1:5432: PostgreSQL variant SKIPPED"
REDIS_SKIP = "Redis not reachable at 127.0.0.1:6379: Redis variant SKIPPED"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def sqlite_url(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / 'concierge.db'}"


async def create_postgres_database(template: str | None = None) -> str:
    """A new database on the shared server (empty, or a copy of ``template``); returns its name."""
    name = "concierge_t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        suffix = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{suffix}')
    finally:
        await admin.close()
    return name


async def drop_postgres_database(name: str) -> None:
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await asyncio.wait_for(admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), 30)
    finally:
        await admin.close()


def postgres_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"


@asynccontextmanager
async def postgres_database(template: str | None = None) -> AsyncIterator[str]:
    """A new database (empty, or a copy of ``template``) that is dropped afterwards."""
    name = await create_postgres_database(template)
    try:
        yield postgres_url(name)
    finally:
        await drop_postgres_database(name)
