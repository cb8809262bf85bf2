"""What one server (or worker) process holds: settings, database, keys. Built once at startup."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher

from backend.crypto import derive_key, load_kek
from backend.db import Database
from backend.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    db: Database
    kek: bytes
    access_token_key: bytes
    hasher: PasswordHasher
    # Filled by the realtime and push packages at startup (hub, dispatcher, ...).
    extensions: dict[str, Any] = field(default_factory=dict)
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        kek = load_kek(settings)
        return cls(
            settings=settings,
            db=Database(settings),
            kek=kek,
            access_token_key=derive_key(kek, "access-token"),
            hasher=PasswordHasher(
                time_cost=settings.password_hash_time_cost,
                memory_cost=settings.password_hash_memory_kib,
                parallelism=1,
            ),
        )
