"""Who gets a push: preferences, locked security alerts, quiet hours, and tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backend.runtime import Runtime
from push.dispatcher import Dispatcher
from tests import push_support
from tests.app_client import AppClient
from tests.push_fake_fcm import FakeFcm
from tests.push_support import (
    add_device,
    at,
    notification_for,
    record,
)
from tests.world import World, check

NEW_YORK = ZoneInfo("America/New_York")

# Fixtures shared by the push tests (bound here so pytest finds them in this module).
dispatcher = push_support.dispatcher
fcm = push_support.fcm
runtime = push_support.runtime
settings = push_support.settings


def _next_local(hour: int, minute: int = 0) -> datetime:
    """The next New York wall-clock time (world properties use that timezone), in UTC.

    Within a day from now, so the event is still fresh (younger than the outbox max age).
    """
    now = datetime.now(NEW_YORK)
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= now + timedelta(minutes=1):
        day = now.date() + timedelta(days=1)
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=NEW_YORK)
    return candidate.astimezone(UTC)


async def _parcel_event(runtime: Runtime, world: World, type: str, unit: str = "4B") -> int:
    home = world.home
    return await record(
        runtime,
        property_id=home.property_id,
        type=type,
        subject="parcel:p1",
        unit_id=home.units[unit],
        payload={
            "parcel_id": "p1",
            "compartment_id": home.compartments["B1"],
            "kiosk_id": home.kiosk.id,
            "unit_id": home.units[unit],
        },
    )


async def test_preferences_list_defaults_and_turn_off(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    resident = world.home.people["resident"]
    await add_device(client, resident, "token-resident")
    body = check(await client.get("/v1/notification-preferences", headers=resident.headers))
    by_type = {p["event_type"]: p for p in body["preferences"]}
    assert by_type["parcel.deposited"] == {
        "event_type": "parcel.deposited",
        "push": True,
        "locked": False,
        "category": "info",
    }
    assert "door.forced" not in by_type  # staff alarms never reach residents
    assert body["quiet_hours"] == [
        {
            "property_id": world.home.property_id,
            "timezone": "America/New_York",
            "start": "22:00",
            "end": "07:00",
        }
    ]

    body = check(
        await client.put(
            "/v1/notification-preferences",
            json={"preferences": [{"event_type": "parcel.deposited", "push": False}]},
            headers=resident.headers,
        )
    )
    assert {p["event_type"]: p["push"] for p in body["preferences"]}["parcel.deposited"] is False
    again = check(await client.get("/v1/notification-preferences", headers=resident.headers))
    assert {p["event_type"]: p["push"] for p in again["preferences"]}["parcel.picked_up"] is True

    muted = await _parcel_event(runtime, world, "parcel.deposited")
    await _parcel_event(runtime, world, "parcel.picked_up")
    await dispatcher.drain()
    assert [r.message["data"]["type"] for r in fcm.sends()] == ["parcel.picked_up"]
    item = await notification_for(client, world.home.people["staff"], world.home.property_id, muted)
    assert (item["state"], item["last_error"], item["deliveries"]) == (
        "skipped",
        "no_recipients",
        [],
    )


@pytest.mark.parametrize(
    "body",
    [
        {"preferences": [{"event_type": "no.such_type", "push": False}]},
        {"preferences": [{"event_type": "parcel.deposited", "push": "no"}]},
        {"preferences": [{"event_type": "parcel.deposited", "push": False, "x": 1}]},
        {"preferences": []},
    ],
)
async def test_invalid_preference_updates_are_rejected(
    client: AppClient,
    world: World,
    body: dict[str, object],
) -> None:
    resident = world.home.people["resident"]
    response = await client.put("/v1/notification-preferences", json=body, headers=resident.headers)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"


async def test_staff_cannot_turn_off_security_alerts(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    staff = home.people["staff"]
    await add_device(client, staff, "token-staff")
    body = check(await client.get("/v1/notification-preferences", headers=staff.headers))
    forced = {p["event_type"]: p for p in body["preferences"]}["door.forced"]
    assert (forced["push"], forced["locked"], forced["category"]) == (True, True, "alarm")

    response = await client.put(
        "/v1/notification-preferences",
        json={"preferences": [{"event_type": "door.forced", "push": False}]},
        headers=staff.headers,
    )
    assert response.status_code == 409
    assert response.json()["code"] == "preference_locked"
    # Non-security pushes can still be muted by staff.
    check(
        await client.put(
            "/v1/notification-preferences",
            json={"preferences": [{"event_type": "kiosk.offline", "push": False}]},
            headers=staff.headers,
        )
    )
    await record(
        runtime,
        property_id=home.property_id,
        type="kiosk.offline",
        payload={"kiosk_id": home.kiosk.id},
    )
    await record(
        runtime,
        property_id=home.property_id,
        type="door.forced",
        payload={"door_id": home.door_id, "kiosk_id": home.kiosk.id},
    )
    await dispatcher.drain()
    assert [r.message["data"]["type"] for r in fcm.sends()] == ["door.forced"]


async def test_quiet_hours_delay_reminders_but_never_alarms(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    await add_device(client, home.people["resident"], "token-resident")
    await add_device(client, home.people["staff"], "token-staff")
    night = _next_local(23, 30)  # inside the default 22:00-07:00 quiet hours
    reminder = await _parcel_event(runtime, world, "parcel.reminder")
    await record(
        runtime,
        property_id=home.property_id,
        type="door.forced",
        payload={"door_id": home.door_id, "kiosk_id": home.kiosk.id},
    )

    await dispatcher.drain(night)
    assert [r.message["data"]["type"] for r in fcm.sends()] == ["door.forced"]
    item = await notification_for(client, home.people["staff"], home.property_id, reminder)
    [delivery] = item["deliveries"]
    morning = (night.astimezone(NEW_YORK) + timedelta(days=1)).replace(hour=7, minute=0)
    assert delivery["state"] == "pending"
    assert at(delivery["next_attempt_at"]) == morning.astimezone(UTC)

    await dispatcher.drain(morning.astimezone(UTC) - timedelta(minutes=1))
    assert len(fcm.sends()) == 1
    await dispatcher.drain(morning.astimezone(UTC) + timedelta(minutes=1))
    assert [r.message["data"]["type"] for r in fcm.sends()] == ["door.forced", "parcel.reminder"]


async def test_a_reminder_retry_that_would_land_in_quiet_hours_waits_for_their_end(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    await add_device(client, home.people["resident"], "token-resident")
    evening = _next_local(21, 50)  # ten minutes before the default 22:00-07:00 quiet hours
    reminder = await _parcel_event(runtime, world, "parcel.reminder")
    fcm.fail_next("QUOTA_EXCEEDED", 1, {"Retry-After": "1200"})  # FCM: come back at 22:10

    await dispatcher.run_once(evening)
    assert [r.status for r in fcm.sends()] == [429]
    item = await notification_for(client, home.people["staff"], home.property_id, reminder)
    [delivery] = item["deliveries"]
    morning = (evening.astimezone(NEW_YORK) + timedelta(days=1)).replace(hour=7, minute=0)
    assert delivery["state"] == "pending"
    assert at(delivery["next_attempt_at"]) == morning.astimezone(UTC)

    await dispatcher.drain(evening + timedelta(minutes=30))  # 22:20: quiet, nothing sent
    assert len(fcm.sends()) == 1
    await dispatcher.drain(morning.astimezone(UTC) + timedelta(minutes=1))
    assert [r.status for r in fcm.sends()] == [429, 200]


async def test_quiet_hours_can_be_switched_off_by_policy(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    check(
        await client.patch(
            f"/v1/staff/properties/{home.property_id}",
            json={"policy": {"quiet_hours": None}},
            headers=world.admin.headers,
        )
    )
    await add_device(client, home.people["resident"], "token-resident")
    await _parcel_event(runtime, world, "parcel.reminder")
    await dispatcher.drain(_next_local(23, 30))
    assert [r.message["data"]["type"] for r in fcm.sends()] == ["parcel.reminder"]


async def test_pushes_never_cross_tenants_or_units(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home, other = world.home, world.other
    tokens = {
        "home-resident": home.people["resident"],
        "home-neighbour": home.people["neighbour"],
        "home-vendor": home.people["vendor"],
        "home-staff": home.people["staff"],
        "other-resident": other.people["resident"],
        "other-staff": other.people["staff"],
        "other-vendor": other.people["vendor"],
    }
    for token, person in tokens.items():
        await add_device(client, person, token)
    await _parcel_event(runtime, world, "parcel.deposited", unit="4B")
    # A work-order event naming the vendor goes to that vendor only ...
    await record(
        runtime,
        property_id=home.property_id,
        type="work_order.started",
        user_id=home.people["vendor"].user_id,
        payload={"work_order_id": "w1"},
    )
    # ... and an event of this property naming a user of another tenant reaches nobody.
    await record(
        runtime,
        property_id=home.property_id,
        type="key.overdue",
        user_id=other.people["vendor"].user_id,
        payload={"key_id": "k1"},
    )
    await dispatcher.drain()
    got = sorted((r.message["data"]["type"], r.token) for r in fcm.sends())
    assert got == [
        ("key.overdue", "home-staff"),
        ("parcel.deposited", "home-resident"),
        ("work_order.started", "home-vendor"),
    ]


async def test_a_phone_registered_twice_gets_one_push(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    resident = world.home.people["resident"]
    await add_device(client, resident, "token-same-phone")
    await add_device(client, resident, "token-same-phone", platform="ios")
    await _parcel_event(runtime, world, "parcel.deposited")
    await dispatcher.drain()
    assert [r.token for r in fcm.sends()] == ["token-same-phone"]


async def test_the_get_answer_can_be_sent_back_with_a_flag_flipped(
    client: AppClient,
    world: World,
) -> None:
    staff = world.home.people["staff"]
    document = check(await client.get("/v1/notification-preferences", headers=staff.headers))
    for preference in document["preferences"]:
        if preference["event_type"] == "kiosk.offline":
            preference["push"] = False
    answer = check(
        await client.put("/v1/notification-preferences", json=document, headers=staff.headers)
    )
    by_type = {p["event_type"]: p["push"] for p in answer["preferences"]}
    assert by_type["kiosk.offline"] is False
    assert by_type["door.forced"] is True
    assert answer["quiet_hours"] == document["quiet_hours"]


async def test_events_older_than_the_max_age_are_not_pushed(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    """A dispatcher started after a long outage does not flood phones with old news."""
    await add_device(client, world.home.people["resident"], "token-resident")
    old = await _parcel_event(runtime, world, "parcel.deposited")
    later = datetime.now(UTC) + timedelta(seconds=runtime.settings.outbox_max_age_seconds + 60)
    await dispatcher.drain(later)
    assert fcm.sends() == []
    item = await notification_for(client, world.home.people["staff"], world.home.property_id, old)
    assert (item["state"], item["last_error"]) == ("skipped", "expired")
