"""A production-shaped deployment for tests and benchmarks: PostgreSQL, Redis, several processes.

``Deployment`` owns a fresh PostgreSQL database (dropped afterwards), a Redis channel prefix
nobody else uses, the settings every process shares (same database, same key-encryption key),
and the processes it started (servers, workers), which it stops on exit. The demo property is
seeded with ``concierge demo`` (parsed from its output) so tests start from what a newcomer
gets: a kiosk with an enrollment code, a resident of 4B, a vendor, a courier, staff.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.databases import PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT
from tests.processes import ServerProcess, WorkerProcess, run_cli


def create_database(host: str = PG_HOST, port: int = PG_PORT) -> str:
    name = "concierge_mp_" + secrets.token_hex(6)

    async def create() -> None:
        admin = await asyncpg.connect(host=host, port=port, user="postgres", database="test")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    asyncio.run(create())
    return name


def drop_database(name: str, host: str = PG_HOST, port: int = PG_PORT) -> None:
    async def drop() -> None:
        admin = await asyncpg.connect(host=host, port=port, user="postgres", database="test")
        try:
            await asyncio.wait_for(
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), 30
            )
        finally:
            await admin.close()

    asyncio.run(drop())


def pg_url(name: str, host: str = PG_HOST, port: int = PG_PORT) -> str:
    return f"postgresql+asyncpg://postgres@{host}:{port}/{name}"


@dataclass
class DemoSeed:
    property_id: str
    kiosk_id: str
    enrollment_code: str
    accounts: dict[str, tuple[str, str]]


def parse_demo_output(text: str) -> DemoSeed:
    accounts = {
        role: (email, password)
        for role, email, password in re.findall(
            r"^\s+(resident|vendor|courier|staff)\s+(\S+@\S+)\s+(\S+)\s*$", text, re.MULTILINE
        )
    }
    prop = re.search(r"^\s+property\s+(\S+)", text, re.MULTILINE)
    kiosk = re.search(r"^\s+kiosk\s+(\S+)\s+enrollment code\s+(\S+)", text, re.MULTILINE)
    if not (prop and kiosk and accounts):
        raise ValueError("unexpected `concierge demo` output:\n" + text)
    return DemoSeed(prop.group(1), kiosk.group(1), kiosk.group(2), accounts)


@dataclass
class Deployment:
    root: Path
    database: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    servers: list[ServerProcess] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    seed: DemoSeed | None = None

    @property
    def database_url(self) -> str:
        return str(self.settings["database_url"])

    @property
    def push_log(self) -> Path:
        return Path(self.settings["push_log_path"])

    def configure(self, **overrides: Any) -> dict[str, Any]:
        """Settings every process shares; ``overrides`` win."""
        kek = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        self.settings = {
            "database_url": pg_url(self.database),
            "redis_url": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
            "redis_channel_prefix": "concierge-t-" + secrets.token_hex(4),
            "key_encryption_key": kek,
            "var_dir": str(self.root / "var"),
            "push_log_path": str(self.root / "push.log"),
            "password_hash_time_cost": 1,
            "password_hash_memory_kib": 1024,
            "background_jobs": False,
            "json_logs": True,
            **overrides,
        }
        return self.settings

    def migrate_and_seed(self) -> DemoSeed:
        migrated = run_cli(["migrate"], self.settings)
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        demo = run_cli(["demo"], self.settings)
        assert demo.returncode == 0, demo.stderr[-3000:]
        self.seed = parse_demo_output(demo.stdout)
        return self.seed

    def server(self, name: str, *, workers: int = 1, **overrides: Any) -> ServerProcess:
        server = ServerProcess.start(
            {**self.settings, **overrides}, log_dir=self.root / "logs", name=name, workers=workers
        )
        self.servers.append(server)
        return server

    def worker(self, name: str = "worker", **overrides: Any) -> WorkerProcess:
        worker = WorkerProcess.start(
            {**self.settings, **overrides}, log_dir=self.root / "logs", name=name, settle=1.0
        )
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        parts = []
        for process in [*self.servers, *self.workers]:
            parts.append(f"--- {process.name} ---\n{process.log()[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for process in [*self.workers, *self.servers]:
            with contextlib.suppress(Exception):
                process.stop()
        if self.database:
            drop_database(self.database)


@contextlib.contextmanager
def deployment(root: Path, **overrides: Any) -> Iterator[Deployment]:
    """A migrated, seeded deployment on a fresh database; every process stopped afterwards."""
    deploy = Deployment(root)
    deploy.database = create_database()
    try:
        deploy.configure(**overrides)
        deploy.migrate_and_seed()
        yield deploy
    finally:
        deploy.close()
