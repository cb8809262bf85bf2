"""Fixtures and helpers shared by the push tests (tests/test_push_*.py import what they use)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.crypto import b64url
from backend.runtime import Runtime
from backend.services.events import record_event
from backend.settings import Settings
from push.dispatcher import Dispatcher
from push.senders import FcmSender
from tests.app_client import AppClient
from tests.conftest import make_settings
from tests.push_fake_fcm import FakeFcm
from tests.world import Person, check


@pytest.fixture
def fcm(tmp_path: Path) -> Iterator[FakeFcm]:
    fake = FakeFcm.start(tmp_path)
    yield fake
    fake.stop()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, fcm: FakeFcm) -> Settings:
    return make_settings(
        database_url,
        tmp_path / "var",
        firebase_credentials=fcm.credentials_path,
        fcm_endpoint=fcm.url,
        fcm_timeout_seconds=10.0,
        outbox_retry_base_seconds=1.0,
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime.create(settings)
    yield rt
    await rt.db.dispose()


@pytest.fixture
async def dispatcher(runtime: Runtime) -> AsyncIterator[Dispatcher]:
    sender = FcmSender(runtime.settings)
    yield Dispatcher(runtime, sender)
    await sender.close()


async def dispatcher_with(runtime: Runtime, **overrides: Any) -> tuple[Dispatcher, Runtime]:
    """A dispatcher over the same database with other settings (close its sender after)."""
    settings = msgspec.structs.replace(runtime.settings, **overrides)
    other = Runtime.create(settings)
    return Dispatcher(other, FcmSender(settings)), other


async def add_device(
    client: AppClient,
    person: Person,
    push_token: str | None,
    platform: str = "android",
) -> str:
    body: dict[str, Any] = {
        "platform": platform,
        "public_key": b64url(Ed25519PrivateKey.generate().public_key().public_bytes_raw()),
    }
    if push_token is not None:
        body["push_token"] = push_token
    created = check(await client.post("/v1/devices", json=body, headers=person.headers), 201)
    return str(created["id"])


async def record(runtime: Runtime, **fields: Any) -> int:
    """Commit one event (and its push outbox row), as a producing feature would."""
    fields.setdefault("actor", "system")
    async with runtime.db.session() as session:
        event = await record_event(session, **fields)
        assert event.id is not None
        return event.id


async def notifications(
    client: AppClient,
    staff: Person,
    property_id: str,
    **params: str,
) -> list[dict[str, Any]]:
    body = check(
        await client.get(
            f"/v1/staff/properties/{property_id}/notifications",
            params=params,
            headers=staff.headers,
        )
    )
    items: list[dict[str, Any]] = body["items"]
    return items


async def notification_for(
    client: AppClient,
    staff: Person,
    property_id: str,
    event_id: int,
) -> dict[str, Any]:
    for item in await notifications(client, staff, property_id):
        if item["event_id"] == str(event_id):
            return item
    for item in await notifications(client, staff, property_id, state="skipped"):
        if item["event_id"] == str(event_id):
            return item
    raise AssertionError(f"no notification for event {event_id}")


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def eventually(predicate: Any, timeout: float = 30.0) -> None:
    """Poll an async predicate (for background work in other tasks or processes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")
