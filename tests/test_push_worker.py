"""``concierge worker`` processes: killed mid-batch, two at once, the log sender; and the server's
own background dispatcher."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from backend.app import create_app
from backend.crypto import fingerprint
from backend.runtime import Runtime
from backend.settings import Settings
from tests import push_support
from tests.app_client import AppClient
from tests.push_fake_fcm import FakeFcm
from tests.push_support import (
    add_device,
    eventually,
    notifications,
    record,
)
from tests.world import World

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# Fixtures shared by the push tests (bound here so pytest finds them in this module).
fcm = push_support.fcm
runtime = push_support.runtime
settings = push_support.settings


def _worker(settings: Settings, *args: str, **env: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONCIERGE_")}
    environ.update(
        {
            "CONCIERGE_DATABASE_URL": settings.database_url,
            "CONCIERGE_VAR_DIR": settings.var_dir,
            "CONCIERGE_OUTBOX_POLL_SECONDS": "0.1",
        }
    )
    if settings.firebase_credentials:
        environ["CONCIERGE_FIREBASE_CREDENTIALS"] = settings.firebase_credentials
        environ["CONCIERGE_FCM_ENDPOINT"] = settings.fcm_endpoint
    environ.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "backend", "worker", *args],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=180)
    return process.returncode, out, err


async def _deposits(runtime: Runtime, world: World, count: int) -> list[int]:
    home = world.home
    ids = []
    for n in range(count):
        ids.append(
            await record(
                runtime,
                property_id=home.property_id,
                type="parcel.deposited",
                unit_id=home.units["4B"],
                payload={"parcel_id": f"p{n}", "compartment_id": home.compartments["A1"]},
            )
        )
    return ids


async def _delivery_states(client: Any, world: World) -> Counter[str]:
    states: Counter[str] = Counter()
    for state in ("delivering", "sent", "failed", "pending"):
        for item in await notifications(
            client, world.home.people["staff"], world.home.property_id, state=state
        ):
            states.update(d["state"] for d in item["deliveries"])
    return states


async def test_worker_killed_mid_batch_loses_nothing(
    client: AppClient,
    world: World,
    runtime: Runtime,
    settings: Settings,
    fcm: FakeFcm,
) -> None:
    resident = world.home.people["resident"]
    tokens = [f"token-{n}" for n in range(3)]
    for token in tokens:
        await add_device(client, resident, token)
    events = await _deposits(runtime, world, 4)
    expected = {(f"concierge-{e}", t) for e in events for t in tokens}

    fcm.hold()  # FCM accepts the requests but does not answer yet
    # One batch holds every delivery (the world's own events are in the outbox too).
    first = _worker(settings, CONCIERGE_OUTBOX_LEASE_SECONDS="2", CONCIERGE_OUTBOX_BATCH_SIZE="500")
    try:
        await asyncio.to_thread(fcm.wait_for, len(expected), 180)
    finally:
        first.kill()  # SIGKILL mid-batch: no outcome recorded, no cleanup
        first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert await _delivery_states(client, world) == Counter({"pending": len(expected)})
    fcm.release()

    second = _worker(settings, CONCIERGE_OUTBOX_LEASE_SECONDS="2")
    try:

        async def all_sent() -> bool:
            return await _delivery_states(client, world) == Counter({"sent": len(expected)})

        await eventually(all_sent, timeout=180)
    finally:
        code, _, err = _stop(second)
    assert code == 0, err
    delivered = Counter((r.message["data"]["notification_id"], r.token) for r in fcm.delivered())
    assert set(delivered) == expected  # nothing lost
    sent = Counter((r.message["data"]["notification_id"], r.token) for r in fcm.sends())
    assert set(sent.values()) == {2}  # each sent before the kill, and once again after


async def test_two_workers_never_send_the_same_row_twice(
    client: AppClient,
    world: World,
    runtime: Runtime,
    settings: Settings,
    fcm: FakeFcm,
) -> None:
    resident = world.home.people["resident"]
    tokens = [f"token-{n}" for n in range(5)]
    for token in tokens:
        await add_device(client, resident, token)
    events = await _deposits(runtime, world, 6)
    expected = {(f"concierge-{e}", t) for e in events for t in tokens}
    fcm.delay_seconds = 0.05  # widen the window in which both workers are busy
    options = {"CONCIERGE_OUTBOX_BATCH_SIZE": "4", "CONCIERGE_OUTBOX_LEASE_SECONDS": "60"}
    workers = [_worker(settings, **options), _worker(settings, **options)]
    try:

        async def all_sent() -> bool:
            return await _delivery_states(client, world) == Counter({"sent": len(expected)})

        await eventually(all_sent, timeout=180)
    finally:
        results = [_stop(w) for w in workers]
    for code, _, err in results:
        assert code == 0, err
    sent = Counter((r.message["data"]["notification_id"], r.token) for r in fcm.sends())
    assert set(sent) == expected
    assert max(sent.values()) == 1, [k for k, v in sent.items() if v > 1]


async def test_worker_once_with_the_log_sender_logs_fingerprints_not_tokens(
    client: AppClient,
    world: World,
    runtime: Runtime,
    settings: Settings,
) -> None:
    await add_device(client, world.home.people["resident"], "token-secret-resident")
    events = await _deposits(runtime, world, 2)
    log_settings = msgspec.structs.replace(settings, firebase_credentials=None)
    code, out, err = _finish(_worker(log_settings, "--once"))
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["sent"] == 2
    log_path = Path(settings.var_dir) / "push.log"
    text = log_path.read_text()
    assert "token-secret-resident" not in text
    assert "token-secret-resident" not in err
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["message"]["data"]["event_id"] for line in lines] == [str(e) for e in events]
    for line in lines:
        message = line["message"]
        assert "token" not in message
        assert message["token_fingerprint"] == fingerprint("token-secret-resident")
        assert message["notification"]["title"] == "Parcel waiting for you"
    # Sent once: a second run finds nothing.
    code, out, err = _finish(_worker(log_settings, "--once"))
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["sent"] == 0


async def test_the_server_runs_the_dispatcher_in_the_background(
    client: AppClient,
    world: World,
    runtime: Runtime,
    settings: Settings,
    fcm: FakeFcm,
) -> None:
    await add_device(client, world.home.people["resident"], "token-resident")
    background = msgspec.structs.replace(settings, background_jobs=True, outbox_poll_seconds=0.1)
    async with AppClient(app=create_app(background)):
        [event_id] = await _deposits(runtime, world, 1)
        await asyncio.to_thread(fcm.wait_for, 1, 120)

        async def settled() -> bool:
            return await _delivery_states(client, world) == Counter({"sent": 1})

        await eventually(settled, timeout=120)
    [request] = fcm.sends()
    assert request.message["data"]["event_id"] == str(event_id)
    assert request.token == "token-resident"


async def test_worker_runs_the_leased_jobs_for_servers_without_background_jobs(
    client: AppClient,
    world: World,
    runtime: Runtime,
    settings: Settings,
    fcm: FakeFcm,
) -> None:
    """Servers with ``CONCIERGE_BACKGROUND_JOBS=false`` (as the test app runs) leave the pickup
    PIN's slow hash to ``concierge worker``: a parcel deposited at the kiosk gets it."""
    from sqlalchemy import text

    from tests.world import check

    home = world.home
    intake = check(
        await client.post(
            "/v1/kiosk/deliveries",
            json={"carrier": "UPS", "tracking": "1ZWORKER1", "unit": "4B", "size": "S"},
            headers=home.kiosk.headers(),
        ),
        201,
    )
    parcel_id = intake["parcel_id"]
    check(
        await client.post(
            f"/v1/kiosk/deliveries/{parcel_id}/deposited", json={}, headers=home.kiosk.headers()
        )
    )

    async def pin_hash() -> str | None:
        async with runtime.db.engine.connect() as connection:
            row = await connection.execute(
                text("SELECT pin_hash FROM parcel WHERE id = :id"), {"id": parcel_id}
            )
            value: str | None = row.scalar_one()
            return value

    assert await pin_hash() is None  # nobody derived it yet: the server runs no jobs
    worker = _worker(settings)
    try:

        async def hashed() -> bool:
            return (await pin_hash() or "").startswith("scrypt$")

        await eventually(hashed, timeout=120)
    finally:
        code, _, err = _stop(worker)
    assert code == 0, err
