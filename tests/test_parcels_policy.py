"""Parcel policy through `concierge policy run-once`: reminders (quiet hours, vacation holds),
the overflow list, and released reservations; the lease that lets one process run the job."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from backend.runtime import Runtime
from backend.services.policy import acquire_lease
from backend.settings import Settings
from tests.app_client import AppClient
from tests.processes import concierge_env, settings_env
from tests.test_parcels_lifecycle import audit_events, deliver, deposit
from tests.world import Site, World, check

ROOT = Path(__file__).resolve().parents[1]


async def run_policy(settings: Settings) -> list[dict[str, Any]]:
    env = concierge_env({**settings_env(settings), "log_level": "WARNING"})
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "backend", "policy", "run-once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


async def set_policy(client: AppClient, site: Site, **policy: Any) -> None:
    check(
        await client.patch(
            f"/v1/staff/properties/{site.property_id}",
            json={"policy": policy},
            headers=site.people["staff"].headers,
        )
    )


def quiet_now(timezone: str) -> dict[str, str]:
    """Quiet hours around the property's current local time."""
    local = datetime.now(ZoneInfo(timezone))
    return {
        "start": (local - timedelta(hours=1)).strftime("%H:%M"),
        "end": (local + timedelta(hours=1)).strftime("%H:%M"),
    }


def parcel_actions(actions: list[dict[str, Any]], site: Site, kind: str) -> list[dict[str, Any]]:
    return [a for a in actions if a["action"] == kind and a["property_id"] == site.property_id]


async def test_reminders_quiet_hours_hold_and_overflow_list(
    client: AppClient,
    world: World,
    settings: Settings,
) -> None:
    site = world.home
    staff, resident = site.people["staff"], site.people["resident"]
    mine = await deliver(client, site, size="S")
    theirs = await deliver(client, site, size="M", unit="1A")
    for parcel in (mine, theirs):
        await deposit(client, site, parcel["parcel_id"])

    # Default policy (5 days): nothing is due yet.
    assert parcel_actions(await run_policy(settings), site, "parcel.reminder") == []

    # Due now, but it is quiet hours at the property (America/New_York): no reminder.
    await set_policy(
        client,
        site,
        reminder_after_days=0,
        overflow_after_days=0,
        quiet_hours=quiet_now("America/New_York"),
    )
    # 4B is on vacation until tomorrow.
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    holds = check(
        await client.put("/v1/delivery-hold", json={"until": until}, headers=resident.headers)
    )
    assert [h["unit_id"] for h in holds] == [site.units["4B"]]
    assert check(await client.get("/v1/delivery-hold", headers=resident.headers)) == holds

    actions = await run_policy(settings)
    assert parcel_actions(actions, site, "parcel.reminder") == []
    # The overflow list is not a notification: quiet hours do not hold it back.
    due = parcel_actions(actions, site, "parcel.overflow_due")
    assert sorted(a["parcel_id"] for a in due) == sorted([mine["parcel_id"], theirs["parcel_id"]])
    listed = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/parcels?overflow_due=true",
            headers=staff.headers,
        )
    )
    assert sorted(p["id"] for p in listed["items"]) == sorted(
        [mine["parcel_id"], theirs["parcel_id"]]
    )

    # Daytime: 1A is reminded, 4B (on hold) is not.
    await set_policy(client, site, quiet_hours=None)
    actions = await run_policy(settings)
    reminded = parcel_actions(actions, site, "parcel.reminder")
    assert [a["parcel_id"] for a in reminded] == [theirs["parcel_id"]]
    assert parcel_actions(actions, site, "parcel.overflow_due") == []  # listed once
    # Run again: nothing repeats.
    assert parcel_actions(await run_policy(settings), site, "parcel.reminder") == []

    # Hold ends: 4B gets its reminder.
    check(await client.put("/v1/delivery-hold", json={"until": None}, headers=resident.headers))
    actions = await run_policy(settings)
    assert [a["parcel_id"] for a in parcel_actions(actions, site, "parcel.reminder")] == [
        mine["parcel_id"]
    ]

    events = await audit_events(client, site)
    reminders = [e for e in events if e["type"] == "parcel.reminder"]
    assert {e["data"]["parcel_id"] for e in reminders} == {
        mine["parcel_id"],
        theirs["parcel_id"],
    }
    assert all(e["data"]["unit_id"] for e in reminders)
    # The other property saw no action at all.
    other = [a for a in actions if a.get("property_id") == world.other.property_id]
    assert other == []

    # Staff confirm the move: the compartment frees, the resident is told where it is.
    check(
        await client.post(f"/v1/staff/parcels/{mine['parcel_id']}/overflow", headers=staff.headers)
    )
    seen = check(await client.get(f"/v1/parcels/{mine['parcel_id']}", headers=resident.headers))
    assert seen["state"] == "overflowed"
    assert seen["location"] == "office"


async def test_abandoned_reservation_is_released(
    client: AppClient,
    world: World,
    settings: Settings,
) -> None:
    """A door that never closed: the policy job releases the compartment (after 15 minutes)."""
    site = world.home
    await deliver(client, site, size="L")
    # Not yet 15 minutes: the reservation stays.
    actions = await run_policy(settings)
    assert parcel_actions(actions, site, "parcel.cancelled") == []
    # The same job, run as if 20 minutes later, releases it.
    runtime = Runtime.create(settings)
    try:
        from backend.services import policy

        later = datetime.now(UTC) + timedelta(minutes=20)
        actions = await policy.run_once(runtime, later)
    finally:
        await runtime.db.dispose()
    assert len(parcel_actions(actions, site, "parcel.cancelled")) == 1
    compartments = check(
        await client.get(
            f"/v1/staff/kiosks/{site.kiosk.id}/compartments", headers=site.people["staff"].headers
        )
    )
    assert {c["label"]: c["state"] for c in compartments["items"]}["C1"] == "free"


async def test_one_process_holds_the_policy_lease(settings: Settings) -> None:
    runtime = Runtime.create(settings)
    try:
        now = datetime.now(UTC)
        ttl = timedelta(seconds=60)
        assert await acquire_lease(runtime, "test-job", "process-a", ttl, now)
        assert not await acquire_lease(runtime, "test-job", "process-b", ttl, now)
        assert await acquire_lease(runtime, "test-job", "process-a", ttl, now)  # renew
        # Once the holder stops renewing, another process takes over.
        later = now + timedelta(seconds=61)
        assert await acquire_lease(runtime, "test-job", "process-b", ttl, later)
        assert not await acquire_lease(runtime, "test-job", "process-a", ttl, later)
        # Concurrent takers: exactly one wins.
        results = await asyncio.gather(
            *(acquire_lease(runtime, "race", f"p{i}", ttl, now) for i in range(6))
        )
        assert results.count(True) == 1
    finally:
        await runtime.db.dispose()
