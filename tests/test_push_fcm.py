"""Push through the real firebase-admin SDK against a local FCM v1 server (tests/push_fake_fcm.py).

The SDK is pointed at it only through settings: CONCIERGE_FIREBASE_CREDENTIALS (a service account
whose token_uri is the local server) and CONCIERGE_FCM_ENDPOINT.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import firebase_admin
import pytest
from firebase_admin import messaging
from sqlmodel import col, select

from backend.crypto import fingerprint
from backend.models import Device
from backend.models.base import utcnow
from backend.runtime import Runtime
from push import messages as push_messages
from push.dispatcher import Dispatcher, RoundReport
from push.senders import SDK_FCM_URL, Outcome
from tests import push_support
from tests.app_client import AppClient
from tests.push_fake_fcm import PROJECT, FakeFcm
from tests.push_support import (
    add_device,
    at,
    dispatcher_with,
    notification_for,
    notifications,
    record,
)
from tests.world import World, check

# Fixtures shared by the push tests (bound here so pytest finds them in this module).
dispatcher = push_support.dispatcher
fcm = push_support.fcm
runtime = push_support.runtime
settings = push_support.settings


def test_sdk_still_has_the_fcm_url_we_override() -> None:
    """CONCIERGE_FCM_ENDPOINT replaces this private constant: an SDK upgrade that moves it fails here."""
    assert firebase_admin.__version__ == "7.7.0"
    assert messaging._MessagingService.FCM_URL == SDK_FCM_URL


async def _deposit(runtime: Runtime, world: World, **payload_extra: str) -> int:
    home = world.home
    return await record(
        runtime,
        property_id=home.property_id,
        type="parcel.deposited",
        actor=f"kiosk:{home.kiosk.id}",
        subject="parcel:p0000000000000001",
        unit_id=home.units["4B"],
        payload={
            "parcel_id": "p0000000000000001",
            "compartment_id": home.compartments["A1"],
            "kiosk_id": home.kiosk.id,
            "unit_id": home.units["4B"],
            **payload_extra,
        },
    )


async def test_deposit_sends_exactly_the_expected_fcm_request(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    await add_device(client, home.people["resident"], "token-resident-4b")
    await add_device(client, home.people["neighbour"], "token-neighbour-1a")
    await add_device(client, world.other.people["resident"], "token-other-tenant")
    event_id = await _deposit(runtime, world, pickup_pin="483920")

    await dispatcher.drain()

    sent = fcm.sends()
    assert len(sent) == 1
    request = sent[0]
    assert request.path == f"/v1/projects/{PROJECT}/messages:send"
    assert request.headers["authorization"] == f"Bearer {fcm.access_token}"
    assert fcm.token_exchanges == 1
    message = request.message
    assert set(request.body) == {"message"}
    assert set(message) == {"token", "notification", "data", "android", "apns"}
    assert message["token"] == "token-resident-4b"
    assert message["notification"] == {
        "title": "Parcel waiting for you",
        "body": "A parcel is in locker A1 at Home Towers lockers.",
    }
    key = f"concierge-{event_id}"
    assert message["data"] == {
        "notification_id": key,
        "event_id": str(event_id),
        "type": "parcel.deposited",
        "property_id": home.property_id,
        "parcel_id": "p0000000000000001",
        "compartment_id": home.compartments["A1"],
        "kiosk_id": home.kiosk.id,
        "unit_id": home.units["4B"],
        "link": "concierge://parcels/p0000000000000001",
    }
    android = message["android"]
    assert android["collapse_key"] == key
    assert android["priority"] == "high"
    assert android["ttl"] == "172800s"
    assert android["notification"]["tag"] == key
    apns = message["apns"]
    assert apns["headers"]["apns-collapse-id"] == key
    assert apns["headers"]["apns-priority"] == "10"
    assert "interruption-level" not in apns["payload"]["aps"]
    assert "483920" not in json.dumps(request.body)  # the pickup PIN never travels in a push

    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    assert item["state"] == "sent"
    [delivery] = item["deliveries"]
    assert delivery["state"] == "sent"
    assert delivery["user_id"] == home.people["resident"].user_id
    assert delivery["token_fingerprint"] == fingerprint("token-resident-4b")
    assert "token-resident-4b" not in json.dumps(item)
    # A second round finds nothing to do: sent rows are never sent again.
    await dispatcher.drain(utcnow() + timedelta(days=3))
    assert len(fcm.sends()) == 1


async def test_door_alarm_goes_to_staff_time_sensitive(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    await add_device(client, home.people["staff"], "token-staff-home", platform="ios")
    await add_device(client, home.people["resident"], "token-resident-home")
    await add_device(client, world.other.people["staff"], "token-staff-other")
    await record(
        runtime,
        property_id=home.property_id,
        type="door.forced",
        actor=f"kiosk:{home.kiosk.id}",
        payload={"door_id": home.door_id, "kiosk_id": home.kiosk.id},
    )
    await dispatcher.drain()
    [request] = fcm.sends()
    message = request.message
    assert message["token"] == "token-staff-home"
    assert message["notification"]["body"] == "Main entrance was opened without access."
    assert message["apns"]["payload"]["aps"]["interruption-level"] == "time-sensitive"
    assert message["apns"]["headers"]["apns-priority"] == "10"
    assert message["android"]["priority"] == "high"
    assert message["data"]["door_id"] == home.door_id


async def test_unregistered_token_is_disabled_at_once_and_never_retried(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    resident = home.people["resident"]
    await add_device(client, resident, "token-good")
    stale = await add_device(client, resident, "token-stale")
    fcm.unregistered.add("token-stale")

    first = await _deposit(runtime, world)
    await dispatcher.drain()
    assert sorted(r.token for r in fcm.sends()) == ["token-good", "token-stale"]
    item = await notification_for(client, home.people["staff"], home.property_id, first)
    states = {d["device_id"]: (d["state"], d["last_error"]) for d in item["deliveries"]}
    assert states[stale] == ("invalid_token", "UNREGISTERED")
    assert item["state"] == "sent"
    async with runtime.db.session() as session:
        device = (await session.exec(select(Device).where(Device.id == stale))).one()
        assert device.push_token_disabled_at is not None

    # Never retried, and the next notification skips the disabled token.
    await dispatcher.drain(utcnow() + timedelta(hours=2))
    await _deposit(runtime, world)
    await dispatcher.drain(utcnow() + timedelta(hours=3))
    assert [r.token for r in fcm.sends()].count("token-stale") == 1
    assert [r.token for r in fcm.sends()].count("token-good") == 2

    # The phone registers a fresh token: pushes reach it again.
    check(
        await client.patch(
            f"/v1/devices/{stale}", json={"push_token": "token-fresh"}, headers=resident.headers
        )
    )
    await _deposit(runtime, world)
    await dispatcher.drain(utcnow() + timedelta(hours=4))
    assert "token-fresh" in [r.token for r in fcm.sends()]


async def test_503_beyond_the_sdk_retries_is_retried_by_us_then_delivered(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    await add_device(client, home.people["resident"], "token-resident")
    fcm.fail_next("UNAVAILABLE", 7)  # the SDK itself tries 5 times per send
    event_id = await _deposit(runtime, world)
    t0 = utcnow()

    report = await dispatcher.run_once(t0)
    assert report.retrying == 1
    first_round = len(fcm.sends())
    assert first_round == 5
    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    [delivery] = item["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["last_error"]) == (
        "pending",
        1,
        "UNAVAILABLE",
    )
    assert item["state"] == "delivering"

    await dispatcher.run_once(t0)  # not due yet: backoff
    assert len(fcm.sends()) == first_round

    await dispatcher.drain(t0 + timedelta(minutes=5))
    assert [r.status for r in fcm.sends()] == [503] * 7 + [200]
    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    assert item["state"] == "sent"
    assert item["deliveries"][0]["attempts"] == 2
    # Every resend carried the same collapse key: the phone shows it once.
    assert {r.message["android"]["collapse_key"] for r in fcm.sends()} == {f"concierge-{event_id}"}


async def test_429_retry_after_is_honoured(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    home = world.home
    await add_device(client, home.people["resident"], "token-resident")
    fcm.fail_next("QUOTA_EXCEEDED", 1, {"Retry-After": "120"})
    event_id = await _deposit(runtime, world)
    t0 = utcnow()

    await dispatcher.run_once(t0)
    assert [r.status for r in fcm.sends()] == [429]
    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    [delivery] = item["deliveries"]
    assert delivery["last_error"] == "QUOTA_EXCEEDED"
    assert at(delivery["next_attempt_at"]) >= t0 + timedelta(seconds=120)

    # Our own backoff (1 s base here) would retry long before; Retry-After wins.
    await dispatcher.drain(t0 + timedelta(seconds=110))
    assert len(fcm.sends()) == 1
    await dispatcher.drain(t0 + timedelta(seconds=125))
    assert [r.status for r in fcm.sends()] == [429, 200]


async def test_retries_stop_at_max_age_and_staff_see_the_failure(
    client: AppClient,
    world: World,
    runtime: Runtime,
    fcm: FakeFcm,
) -> None:
    home = world.home
    staff = home.people["staff"]
    await add_device(client, home.people["resident"], "token-resident")
    fcm.fail_next("QUOTA_EXCEEDED", 50)
    short, short_runtime = await dispatcher_with(
        runtime, outbox_max_age_seconds=600, outbox_retry_base_seconds=60.0
    )
    try:
        event_id = await _deposit(runtime, world)
        t0 = utcnow()
        for minutes in range(0, 60, 5):
            await short.drain(t0 + timedelta(minutes=minutes))
    finally:
        await short.sender.close()
        await short_runtime.db.dispose()
    attempts = len(fcm.sends())
    assert 2 <= attempts < 10  # backed off: not one attempt per round
    [item] = await notifications(client, staff, home.property_id, state="failed")
    assert item["event_id"] == str(event_id)
    assert item["last_error"] == "retries_exhausted"
    [delivery] = item["deliveries"]
    assert (delivery["state"], delivery["last_error"]) == ("failed", "QUOTA_EXCEEDED")
    assert delivery["attempts"] == attempts
    assert await notifications(client, staff, home.property_id, state="pending") == []
    # Another property's staff cannot look.
    response = await client.get(
        f"/v1/staff/properties/{home.property_id}/notifications",
        headers=world.other.people["staff"].headers,
    )
    assert response.status_code == 404


async def test_a_worker_that_lost_its_lease_cannot_overwrite_the_newer_outcome(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    """Worker A claims, then freezes past its lease; B re-claims and delivers; A wakes up late."""
    home = world.home
    await add_device(client, home.people["resident"], "token-resident")
    event_id = await _deposit(runtime, world)
    t0 = utcnow()
    frozen = Dispatcher(runtime, dispatcher.sender)
    await frozen.expand(t0)
    claims, _ = await frozen.claim(t0, RoundReport())
    assert len(claims) == 1

    later = t0 + timedelta(seconds=runtime.settings.outbox_lease_seconds + 1)
    report = await dispatcher.run_once(later)
    assert report.sent == 1
    assert [r.status for r in fcm.sends()] == [200]

    late = RoundReport()
    await frozen.record(claims, [Outcome(False, error="UNREGISTERED", permanent=True)], later, late)
    assert late.lost_leases == 1
    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    assert item["state"] == "sent"
    assert [(d["state"], d["attempts"]) for d in item["deliveries"]] == [("sent", 2)]
    async with runtime.db.session() as session:
        [device] = (
            await session.exec(select(Device).where(col(Device.push_token).is_not(None)))
        ).all()
        assert device.push_token_disabled_at is None  # the stale verdict was not applied


@pytest.fixture
async def event_id(
    client: AppClient,
    world: World,
    runtime: Runtime,
) -> int:
    """A deposit for the resident of 4B, whose phone has a push token: one delivery is due."""
    await add_device(client, world.home.people["resident"], "token-resident")
    return await _deposit(runtime, world)


class _PausingDispatcher(Dispatcher):
    """A dispatcher that runs ``during`` while it works out a notification's recipients: the
    moment a worker is slowest, or freezes, or dies."""

    def __init__(self, runtime: Runtime, sender: Any, during: Any) -> None:
        super().__init__(runtime, sender)
        self.during = during

    async def _plan(self, *args: Any, **kwargs: Any) -> Any:
        await self.during()
        return await super()._plan(*args, **kwargs)


async def test_working_out_recipients_holds_no_lock_the_server_would_wait_on(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
    event_id: int,
) -> None:
    """On SQLite one write lock covers the database: a worker expanding inside a transaction
    would make this write (a request's, say) wait until the expansion ends, here forever."""
    home = world.home
    written: list[int] = []

    async def a_request_writes() -> None:
        written.append(
            await asyncio.wait_for(
                record(runtime, property_id=home.property_id, type="door.opened"), 10
            )
        )

    slow = _PausingDispatcher(runtime, dispatcher.sender, a_request_writes)
    assert await slow.expand(utcnow()) >= 1
    assert written  # it committed while the worker was between its lease and its write
    report = await dispatcher.run_once()
    assert report.sent == 1
    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    assert item["state"] == "sent"


async def test_a_worker_that_dies_mid_expansion_leaves_the_notification_to_others(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
    event_id: int,
) -> None:
    home = world.home

    async def crash() -> None:
        raise RuntimeError("worker died")

    t0 = utcnow()
    with pytest.raises(RuntimeError):
        await _PausingDispatcher(runtime, dispatcher.sender, crash).expand(t0)
    assert (await dispatcher.run_once(t0)).expanded == 0  # still leased to the dead worker
    later = t0 + timedelta(seconds=runtime.settings.outbox_lease_seconds + 1)
    report = await dispatcher.run_once(later)
    assert (report.expanded, report.sent) == (1, 1)
    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    assert item["state"] == "sent"
    assert [r.status for r in fcm.sends()] == [200]


async def test_a_worker_whose_expansion_lease_ran_out_adds_no_second_delivery(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
    event_id: int,
) -> None:
    """Worker A leases the row and freezes past its lease; B expands and sends; A wakes up."""
    home = world.home
    t0 = utcnow()
    later = t0 + timedelta(seconds=runtime.settings.outbox_lease_seconds + 1)
    taken_over: list[RoundReport] = []

    async def freeze_while_another_takes_over() -> None:
        if not taken_over:
            taken_over.append(await dispatcher.run_once(later))

    frozen = _PausingDispatcher(runtime, dispatcher.sender, freeze_while_another_takes_over)
    assert await frozen.expand(t0) == 0  # its write found the lease gone
    assert (taken_over[0].expanded, taken_over[0].sent) == (1, 1)
    assert (await frozen.claim(later, RoundReport()))[0] == []
    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    assert item["state"] == "sent"
    assert [(d["state"], d["attempts"]) for d in item["deliveries"]] == [("sent", 1)]
    assert [r.status for r in fcm.sends()] == [200]


async def test_a_kiosk_deposit_through_the_api_pushes_to_the_unit(
    client: AppClient,
    world: World,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    """The whole path: courier at the kiosk -> door closed -> outbox -> FCM request."""
    home = world.home
    resident = home.people["resident"]
    await add_device(client, resident, "token-resident-4b")
    await add_device(client, home.people["neighbour"], "token-neighbour-1a")
    assigned = check(
        await client.post(
            "/v1/kiosk/deliveries",
            json={"carrier": "UPS", "tracking": "1Z999PUSH", "unit": "4B", "size": "M"},
            headers=home.kiosk.headers(),
        ),
        201,
    )
    parcel_id = assigned["parcel_id"]
    await dispatcher.drain()
    assert fcm.sends() == []  # assigned is not deposited: nobody is told yet
    check(
        await client.post(
            f"/v1/kiosk/deliveries/{parcel_id}/deposited", json={}, headers=home.kiosk.headers()
        )
    )
    await dispatcher.drain()

    [request] = fcm.sends()
    message = request.message
    assert message["token"] == "token-resident-4b"
    assert message["notification"] == {
        "title": "Parcel waiting for you",
        "body": f"A parcel is in locker {assigned['compartment']['label']} at Home Towers lockers.",
    }
    data = message["data"]
    assert data["type"] == "parcel.deposited"
    assert data["parcel_id"] == parcel_id
    assert data["compartment_id"] == assigned["compartment"]["id"]
    assert data["kiosk_id"] == home.kiosk.id
    assert data["unit_id"] == home.units["4B"]
    assert data["link"] == f"concierge://parcels/{parcel_id}"
    parcel = check(await client.get(f"/v1/parcels/{parcel_id}", headers=resident.headers))
    pin = parcel.get("pickup_pin")
    assert pin, parcel
    assert pin not in json.dumps(request.body)


def test_every_push_template_has_texts_in_every_locale() -> None:
    for locale, catalog in push_messages.CATALOG.items():
        for event_type in push_messages.TEMPLATES:
            for part in ("title", "body"):
                text = push_messages.text(f"{event_type}.{part}", {}, locale)
                assert text, (locale, event_type, part)
                assert "{" not in text, (locale, event_type, part)
        assert set(catalog) == {
            f"{t}.{part}" for t in push_messages.TEMPLATES for part in ("title", "body")
        }


async def test_the_fcm_timeout_setting_bounds_a_hanging_call(
    client: AppClient,
    world: World,
    runtime: Runtime,
    fcm: FakeFcm,
) -> None:
    """Without CONCIERGE_FCM_TIMEOUT_SECONDS the SDK would wait 120 s per attempt."""
    home = world.home
    await add_device(client, home.people["resident"], "token-resident")
    event_id = await _deposit(runtime, world)
    quick, quick_runtime = await dispatcher_with(runtime, fcm_timeout_seconds=0.5)
    try:
        fcm.delay_seconds = 3.0
        t0 = utcnow()
        report = await quick.run_once(t0)
        assert report.retrying == 1
        item = await notification_for(client, home.people["staff"], home.property_id, event_id)
        [delivery] = item["deliveries"]
        assert delivery["state"] == "pending"
        assert delivery["last_error"] == "DEADLINE_EXCEEDED", delivery
        fcm.delay_seconds = 0.0
        await quick.drain(t0 + timedelta(minutes=5))
    finally:
        await quick.sender.close()
        await quick_runtime.db.dispose()
    item = await notification_for(client, home.people["staff"], home.property_id, event_id)
    assert item["state"] == "sent"


async def test_scheduled_visit_is_pushed_to_the_unit_and_the_vendor(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
    fcm: FakeFcm,
) -> None:
    """The resident learns a vendor is coming (issue 7), by push as well as live."""
    home = world.home
    await add_device(client, home.people["resident"], "token-resident")
    await add_device(client, home.people["vendor"], "token-vendor")
    await add_device(client, home.people["neighbour"], "token-neighbour")
    starts = utcnow() + timedelta(days=1)
    response = await client.post(
        f"/v1/staff/properties/{home.property_id}/work-orders",
        json={
            "unit_id": home.units["4B"],
            "vendor_user_id": home.people["vendor"].user_id,
            "description": "Leaking tap",
            "starts_at": starts.isoformat(),
            "ends_at": (starts + timedelta(hours=2)).isoformat(),
            "door_ids": [home.door_id],
            "key_ids": [],
        },
        headers=home.people["staff"].headers,
    )
    assert response.status_code == 201, response.text
    await dispatcher.drain()
    sent = {r.message["token"]: r.message for r in fcm.sends()}
    assert set(sent) == {"token-resident", "token-vendor"}
    assert sent["token-resident"]["notification"]["title"] == "Visit scheduled"
    assert sent["token-resident"]["data"]["work_order_id"] == response.json()["id"]


async def test_finished_notifications_are_pruned_after_the_retention(
    client: AppClient,
    world: World,
    runtime: Runtime,
    dispatcher: Dispatcher,
) -> None:
    """Sent notifications stay visible to staff for the retention, then go with their
    deliveries; a notification still in flight is never pruned."""
    home, staff = world.home, world.home.people["staff"]
    await add_device(client, home.people["resident"], "token-resident-4b")
    sent = await record(
        runtime, property_id=home.property_id, type="parcel.deposited", unit_id=home.units["4B"]
    )
    await dispatcher.drain()
    assert (await notification_for(client, staff, home.property_id, sent))["state"] == "sent"
    pending = await record(
        runtime, property_id=home.property_id, type="parcel.deposited", unit_id=home.units["4B"]
    )
    days = runtime.settings.outbox_retention_days
    assert await dispatcher.prune(utcnow() + timedelta(days=days - 1)) == 0
    assert await dispatcher.prune(utcnow() + timedelta(days=days + 1)) == 1
    assert await dispatcher.prune(utcnow() + timedelta(days=days + 1)) == 0
    remaining = [n["event_id"] for n in await notifications(client, staff, home.property_id)]
    assert remaining == [str(pending)]
