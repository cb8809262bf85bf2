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


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new, empty database on the shared server; dropped (forcefully) afterwards."""
    name = "concierge_t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
        try:
            await asyncio.wait_for(
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), 30
            )
        finally:
            await admin.close()
