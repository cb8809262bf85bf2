"""A vendor visit end to end, through the staff and phone APIs and a real kiosk (store + Verifier)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from backend.settings import Settings
from tests.app_client import AppClient
from tests.test_keys_custody import policy_job
from tests.vendor_support import (
    HOUR,
    MINUTE,
    KioskSim,
    create_key,
    create_visit,
    credentials_for,
    events_of,
    iso,
    my_events,
    phone_of,
    place,
    types,
    utc_now,
)
from tests.world import World, check

Client = AppClient


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_full_visit_scheduled_opened_key_out_key_back_closed(
    client: Client, world: World, tmp_path: Path
) -> None:
    home = world.home
    staff, vendor = home.people["staff"], home.people["vendor"]
    resident, neighbour = home.people["resident"], home.people["neighbour"]
    k1 = home.compartments["K1"]
    key = await create_key(client, home)
    assert (key["state"], key["holder"]) == ("in_office", None)

    # Scheduled: the unit's resident and the vendor are told; the neighbour is not.
    now = utc_now()
    visit = await create_visit(
        client, home, starts_at=now - 5 * MINUTE, ends_at=now + 2 * HOUR, key_ids=[key["id"]]
    )
    assert visit["state"] == "scheduled"
    assert visit["current_window"] is not None
    assert "work_order.scheduled" in types(await my_events(client, resident))
    assert "work_order.scheduled" in types(await my_events(client, vendor))
    assert "work_order.scheduled" not in types(await my_events(client, neighbour))

    placed = await place(client, home, key["id"], visit["id"])
    assert (placed["state"], placed["compartment_id"], placed["work_order_id"]) == (
        "in_compartment",
        k1,
        visit["id"],
    )

    # The vendor's app sees the visit and gets one credential per thing it opens right now.
    mine = check(await client.get("/v1/work-orders", headers=vendor.headers))
    assert [w["id"] for w in mine["items"]] == [visit["id"]]
    assert mine["items"][0]["keys"][0]["compartment_id"] == k1
    phone = await phone_of(client, vendor)
    issued = (await credentials_for(client, phone, visit["id"]))["credentials"]
    by_target = {c["target"]: c for c in issued}
    assert set(by_target) == {f"door:{home.door_id}", f"compartment:{k1}"}
    for credential in issued:
        assert at(credential["expires_at"]) <= at(visit["ends_at"])
    only_door = (await credentials_for(client, phone, visit["id"], target=f"door:{home.door_id}"))[
        "credentials"
    ]
    assert [c["target"] for c in only_door] == [f"door:{home.door_id}"]

    # At the kiosk: the door, then the key compartment; the kiosk journals and uploads.
    kiosk = KioskSim.open(home.kiosk, tmp_path / "kiosk")
    await kiosk.sync(client)
    door = kiosk.redeem(phone, by_target[f"door:{home.door_id}"]["token"])
    assert (door.granted, door.target) == (True, f"door:{home.door_id}"), door
    kiosk.report("door.opened", {"door_id": home.door_id})
    kiosk.report("door.closed", {"door_id": home.door_id})
    compartment = kiosk.redeem(phone, by_target[f"compartment:{k1}"]["token"])
    assert compartment.granted, compartment
    assert (await kiosk.upload(client))["stored"] == 4

    # Key out: checked out to the vendor, due back at the window's end plus key grace (15 min).
    held = check(await client.get(f"/v1/staff/keys/{key['id']}", headers=staff.headers))
    assert held["state"] == "checked_out"
    assert held["compartment_id"] is None
    assert held["holder"]["user_id"] == vendor.user_id
    assert at(held["due_back_at"]) == at(visit["ends_at"]) + 15 * MINUTE
    mine_keys = check(await client.get("/v1/keys", headers=vendor.headers))["items"]
    assert [k["id"] for k in mine_keys] == [key["id"]]
    assert check(await client.get("/v1/keys", headers=resident.headers))["items"] == []
    resident_sees = types(await my_events(client, resident))
    assert "work_order.started" in resident_sees
    assert "key.checked_out" in resident_sees
    view = check(await client.get(f"/v1/staff/work-orders/{visit['id']}", headers=staff.headers))
    assert view["state"] == "active"

    # Key back into the (now free) key compartment: the visit has ended.
    kiosk.report("key.returned", {"key_id": key["id"], "compartment_id": k1})
    await kiosk.upload(client)
    back = check(await client.get(f"/v1/staff/keys/{key['id']}", headers=staff.headers))
    assert (back["state"], back["compartment_id"], back["holder"], back["due_back_at"]) == (
        "in_compartment",
        k1,
        None,
        None,
    )
    assert check(await client.get("/v1/keys", headers=vendor.headers))["items"] == []
    view = check(await client.get(f"/v1/staff/work-orders/{visit['id']}", headers=staff.headers))
    assert view["state"] == "completed"
    resident_sees = types(await my_events(client, resident))
    assert "key.returned" in resident_sees
    assert "work_order.ended" in resident_sees
    assert resident_sees.index("work_order.started") < resident_sees.index("work_order.ended")

    # The chain of custody, oldest first, names who, when and which kiosk.
    custody = check(await client.get(f"/v1/staff/keys/{key['id']}/custody", headers=staff.headers))[
        "items"
    ]
    assert [c["action"] for c in custody] == ["created", "placed", "checked_out", "returned"]
    assert custody[2]["user_id"] == vendor.user_id
    assert custody[2]["kiosk_id"] == home.kiosk.id
    assert custody[2]["credential_id"] == by_target[f"compartment:{k1}"]["id"]
    assert custody[3]["compartment_id"] == k1

    # Staff saw every movement and the door as events.
    trail = types(await events_of(client, home))
    for expected in ("key.placed", "key.checked_out", "key.returned", "door.opened"):
        assert expected in trail

    # A closed visit opens nothing any more.
    refused = await credentials_for(client, phone, visit["id"], status=403)
    assert refused["code"] == "outside_access_window"
    assert refused["next_window_starts_at"] is None


async def test_cancelled_visit_credential_refused_by_the_kiosk_after_sync(
    client: Client, world: World, tmp_path: Path
) -> None:
    home = world.home
    staff, vendor = home.people["staff"], home.people["vendor"]
    now = utc_now()
    visit = await create_visit(client, home, starts_at=now - MINUTE, ends_at=now + HOUR)
    phone = await phone_of(client, vendor)
    kiosk = KioskSim.open(home.kiosk, tmp_path / "kiosk")
    await kiosk.sync(client)
    batch = check(
        await client.post(
            "/v1/credentials",
            json={"device_id": phone.device_id, "work_order_id": visit["id"], "count": 2},
            headers=vendor.headers,
        ),
        201,
    )["credentials"]
    assert len(batch) == 2

    cancelled = check(
        await client.post(
            f"/v1/staff/work-orders/{visit['id']}/cancel",
            json={"reason": "tenant rescheduled"},
            headers=staff.headers,
        )
    )
    assert cancelled["state"] == "cancelled"
    # Before syncing the kiosk still trusts what it has (offline); after sync it refuses.
    assert kiosk.redeem(phone, batch[0]["token"]).granted
    await kiosk.sync(client)
    decision = kiosk.redeem(phone, batch[1]["token"])
    assert (decision.granted, decision.reason) == (False, "revoked")
    # The app gets nothing new, and cancelling twice is a documented conflict.
    refused = await credentials_for(client, phone, visit["id"], status=403)
    assert (refused["code"], refused["next_window_starts_at"]) == ("outside_access_window", None)
    again = check(
        await client.post(
            f"/v1/staff/work-orders/{visit['id']}/cancel", json={}, headers=staff.headers
        ),
        409,
    )
    assert again["code"] == "work_order_closed"
    assert "work_order.cancelled" in types(await my_events(client, home.people["resident"]))


async def test_window_grace_next_window_and_validity_never_outlasting_the_window(
    client: Client, world: World
) -> None:
    home = world.home
    vendor = home.people["vendor"]
    phone = await phone_of(client, vendor)
    now = utc_now()

    later = await create_visit(client, home, starts_at=now + 3 * HOUR, ends_at=now + 4 * HOUR)
    refused = await credentials_for(client, phone, later["id"], status=403)
    assert refused["code"] == "outside_access_window"
    assert at(refused["next_window_starts_at"]) == at(later["starts_at"])

    # Within the access grace (10 minutes by default) before the start: allowed.
    soon = await create_visit(client, home, starts_at=now + 5 * MINUTE, ends_at=now + HOUR)
    assert len((await credentials_for(client, phone, soon["id"]))["credentials"]) == 1

    # A window ending in two minutes: the credential ends with it, not after 5 minutes.
    ending = await create_visit(client, home, starts_at=now - HOUR, ends_at=now + 2 * MINUTE)
    issued = (await credentials_for(client, phone, ending["id"]))["credentials"]
    assert at(issued[0]["expires_at"]) <= at(ending["ends_at"])

    # Shortening revokes what outlives the new end and moves the window's end.
    shorten_to = now + MINUTE
    long = await create_visit(client, home, starts_at=now - HOUR, ends_at=now + 3 * HOUR)
    outstanding = (await credentials_for(client, phone, long["id"]))["credentials"][0]
    short = check(
        await client.post(
            f"/v1/staff/work-orders/{long['id']}/shorten",
            json={"ends_at": iso(shorten_to)},
            headers=home.people["staff"].headers,
        )
    )
    assert at(short["ends_at"]) <= shorten_to
    trail = await events_of(client, home)
    revoked = [e for e in trail if e["type"] == "credential.revoked"]
    assert outstanding["id"] in {e["data"].get("credential_id") for e in revoked}
    fresh = (await credentials_for(client, phone, long["id"]))["credentials"][0]
    assert at(fresh["expires_at"]) <= shorten_to


async def test_weekly_visit_keeps_local_time_across_daylight_saving(
    client: Client, world: World
) -> None:
    """Every Tuesday 09:00-12:00 in New York: 14:00 UTC before 14 March 2027, 13:00 UTC after."""
    home = world.home
    body: dict[str, Any] = {
        "unit_id": home.units["4B"],
        "vendor_user_id": home.people["vendor"].user_id,
        "description": "Cleaners",
        "recurrence": {
            "weekdays": ["tue"],
            "start_time": "09:00",
            "end_time": "12:00",
            "starts_on": "2027-03-01",
            "until": "2027-03-31",
        },
        "door_ids": [home.door_id],
    }
    visit = check(
        await client.post(
            f"/v1/staff/properties/{home.property_id}/work-orders",
            json=body,
            headers=home.people["staff"].headers,
        ),
        201,
    )
    assert visit["kind"] == "weekly"
    assert at(visit["starts_at"]) == at("2027-03-02T14:00:00+00:00")  # EST, UTC-5
    assert at(visit["ends_at"]) == at("2027-03-30T16:00:00+00:00")  # EDT, UTC-4
    assert at(visit["next_window"]["starts_at"]) == at("2027-03-02T14:00:00+00:00")
    assert visit["recurrence"]["weekdays"] == ["tue"]
    phone = await phone_of(client, home.people["vendor"])
    refused = await credentials_for(client, phone, visit["id"], status=403)
    assert at(refused["next_window_starts_at"]) == at("2027-03-02T14:00:00+00:00")


async def test_phone_views_are_scoped_to_the_vendor_and_the_unit(
    client: Client, world: World
) -> None:
    home = world.home
    now = utc_now()
    visit = await create_visit(client, home, starts_at=now, ends_at=now + HOUR)
    resident = home.people["resident"]
    seen = check(await client.get(f"/v1/work-orders/{visit['id']}", headers=resident.headers))
    assert seen["vendor_user_id"] == home.people["vendor"].user_id
    assert [
        w["id"]
        for w in check(await client.get("/v1/work-orders", headers=resident.headers))["items"]
    ] == [visit["id"]]
    neighbour = home.people["neighbour"]
    assert check(await client.get("/v1/work-orders", headers=neighbour.headers))["items"] == []
    listed = check(
        await client.get(
            f"/v1/staff/properties/{home.property_id}/work-orders",
            params={"state": "scheduled"},
            headers=home.people["staff"].headers,
        )
    )
    assert [w["id"] for w in listed["items"]] == [visit["id"]]


async def test_door_only_visit_starts_at_first_door_and_ends_when_its_window_closes(
    client: Client, world: World, settings: Settings, tmp_path: Path
) -> None:
    home = world.home
    now = utc_now()
    visit = await create_visit(client, home, starts_at=now - MINUTE, ends_at=now + HOUR)
    phone = await phone_of(client, home.people["vendor"])
    token = (await credentials_for(client, phone, visit["id"]))["credentials"][0]["token"]
    kiosk = KioskSim.open(home.kiosk, tmp_path / "kiosk")
    await kiosk.sync(client)
    assert kiosk.redeem(phone, token).granted
    await kiosk.upload(client)
    staff = home.people["staff"]
    view = check(await client.get(f"/v1/staff/work-orders/{visit['id']}", headers=staff.headers))
    assert view["state"] == "active"
    check(
        await client.post(
            f"/v1/staff/work-orders/{visit['id']}/shorten",
            json={"ends_at": iso(utc_now())},
            headers=staff.headers,
        )
    )
    actions = await policy_job(settings)
    assert {"action": "work_order.ended", "work_order_id": visit["id"]} in actions
    view = check(await client.get(f"/v1/staff/work-orders/{visit['id']}", headers=staff.headers))
    assert view["state"] == "completed"
    resident_sees = types(await my_events(client, home.people["resident"]))
    assert resident_sees.count("work_order.started") == 1
    assert resident_sees.count("work_order.ended") == 1


async def test_vendor_is_reminded_once_before_the_window(
    client: Client, world: World, settings: Settings
) -> None:
    home = world.home
    now = utc_now()
    soon = await create_visit(client, home, starts_at=now + 20 * MINUTE, ends_at=now + HOUR)
    later = await create_visit(client, home, starts_at=now + 3 * HOUR, ends_at=now + 4 * HOUR)
    reminders = [a for a in await policy_job(settings) if a["action"] == "work_order.starting"]
    assert reminders == [{"action": "work_order.starting", "work_order_id": soon["id"]}]
    again = [a for a in await policy_job(settings) if a["action"] == "work_order.starting"]
    assert again == []
    seen = await my_events(client, home.people["vendor"])
    starting = [e for e in seen if e["type"] == "work_order.starting"]
    assert [e["data"]["work_order_id"] for e in starting] == [soon["id"]]
    assert later["id"] not in {e["data"]["work_order_id"] for e in starting}
