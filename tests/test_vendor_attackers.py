"""Bad input and attacker-side tests for vendor visits, keys, override and emergency access.

Each intruder gets the documented status and ``code``; a refused request writes nothing.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tests.app_client import AppClient
from tests.vendor_support import (
    HOUR,
    MINUTE,
    KioskSim,
    create_key,
    create_visit,
    credentials_for,
    events_of,
    iso,
    phone_of,
    place,
    types,
    utc_now,
)
from tests.world import World, check, invite

Client = AppClient


async def _count_visits(client: Client, world: World) -> int:
    home = world.home
    body = check(
        await client.get(
            f"/v1/staff/properties/{home.property_id}/work-orders",
            headers=home.people["staff"].headers,
        )
    )
    return len(body["items"])


def _next_weekday(start: date, weekday: int) -> date:
    return start + timedelta(days=(weekday - start.weekday()) % 7 or 7)


async def test_bad_work_orders_are_refused_with_documented_codes_and_nothing_written(
    client: Client, world: World
) -> None:
    home = world.home
    staff = home.people["staff"]
    now = utc_now()
    wednesday = _next_weekday(now.date() + timedelta(days=1), 2)
    base: dict[str, Any] = {
        "unit_id": home.units["4B"],
        "vendor_user_id": home.people["vendor"].user_id,
        "door_ids": [home.door_id],
    }
    window = {"starts_at": iso(now + HOUR), "ends_at": iso(now + 2 * HOUR)}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"starts_at": iso(now + 2 * HOUR), "ends_at": iso(now + HOUR)}, 400, "invalid_window"),
        ({"starts_at": iso(now + HOUR), "ends_at": iso(now + HOUR)}, 400, "invalid_window"),
        ({"starts_at": iso(now - 2 * HOUR), "ends_at": iso(now - HOUR)}, 400, "window_in_past"),
        (
            {
                "recurrence": {
                    "weekdays": ["tue"],
                    "start_time": "09:00",
                    "end_time": "12:00",
                    "starts_on": wednesday.isoformat(),
                    "until": (wednesday + timedelta(days=5)).isoformat(),
                }
            },
            400,
            "recurrence_never_occurs",
        ),
        (
            {
                "recurrence": {
                    "weekdays": [],
                    "start_time": "09:00",
                    "end_time": "12:00",
                    "until": (now.date() + timedelta(days=30)).isoformat(),
                }
            },
            400,
            "recurrence_never_occurs",
        ),
        (
            {
                "recurrence": {
                    "weekdays": ["mon"],
                    "start_time": "09:00",
                    "end_time": "12:00",
                    "until": (now.date() - timedelta(days=3)).isoformat(),
                }
            },
            400,
            "recurrence_never_occurs",
        ),
        (
            {"starts_at": "2030-01-01T09:00:00", "ends_at": "2030-01-01T10:00:00"},
            400,
            "validation_error",
        ),
        ({**window, "vendor_user_id": home.people["resident"].user_id}, 404, "not_found"),
        ({**window, "vendor_user_id": world.other.people["staff"].user_id}, 404, "not_found"),
        ({**window, "door_ids": [world.other.door_id]}, 404, "not_found"),
        ({**window, "unit_id": world.other.units["4B"]}, 404, "not_found"),
        ({**window, "surprise": 1}, 400, "validation_error"),
        ({}, 400, "validation_error"),
    ]
    for overrides, status, code in cases:
        body = {**base, **overrides}
        problem = check(
            await client.post(
                f"/v1/staff/properties/{home.property_id}/work-orders",
                json=body,
                headers=staff.headers,
            ),
            status,
        )
        assert problem["code"] == code, (overrides, problem)
        assert problem["status"] == status
    assert await _count_visits(client, world) == 0
    assert "work_order.scheduled" not in types(await events_of(client, home))


async def test_intruders_on_a_visit(client: Client, world: World) -> None:
    home, other = world.home, world.other
    now = utc_now()
    key = await create_key(client, home)
    visit = await create_visit(
        client, home, starts_at=now - MINUTE, ends_at=now + HOUR, key_ids=[key["id"]]
    )
    await place(client, home, key["id"], visit["id"])
    rival = await invite(client, home.people["staff"], home.property_id, "vendor", company="Rival")

    # Another vendor (another company) cannot get credentials for, or even see, the visit.
    rival_phone = await phone_of(client, rival)
    assert (await credentials_for(client, rival_phone, visit["id"], status=404))["code"] == (
        "not_found"
    )
    assert check(await client.get(f"/v1/work-orders/{visit['id']}", headers=rival.headers), 404)
    assert check(await client.get("/v1/work-orders", headers=rival.headers))["items"] == []
    # A resident (even of the visited unit) cannot get the vendor's credentials.
    resident_phone = await phone_of(client, home.people["resident"])
    await credentials_for(client, resident_phone, visit["id"], status=404)
    # A resident of another unit does not see the visit.
    neighbour = home.people["neighbour"]
    check(await client.get(f"/v1/work-orders/{visit['id']}", headers=neighbour.headers), 404)
    # Staff of another property: everything is NotFound.
    intruder = other.people["staff"].headers
    for method, path, body in (
        ("GET", f"/v1/staff/work-orders/{visit['id']}", None),
        ("POST", f"/v1/staff/work-orders/{visit['id']}/cancel", {}),
        ("POST", f"/v1/staff/work-orders/{visit['id']}/shorten", {"ends_at": iso(now)}),
        ("GET", f"/v1/staff/keys/{key['id']}", None),
        ("GET", f"/v1/staff/keys/{key['id']}/custody", None),
        ("POST", f"/v1/staff/keys/{key['id']}/place", {"compartment_id": other.compartments["K1"]}),
        ("GET", f"/v1/staff/properties/{home.property_id}/work-orders", None),
        ("GET", f"/v1/staff/properties/{home.property_id}/keys", None),
        (
            "POST",
            f"/v1/staff/kiosks/{home.kiosk.id}/commands",
            {"action": "open", "door_id": home.door_id, "reason": "curious"},
        ),
    ):
        response = await client.request(method, path, json=body, headers=intruder)
        assert check(response, 404)["code"] == "not_found", (method, path)
    # Vendors and residents may not use the staff API at all.
    for person in ("vendor", "resident"):
        headers = home.people[person].headers
        for path in (
            f"/v1/staff/properties/{home.property_id}/work-orders",
            f"/v1/staff/keys/{key['id']}",
        ):
            assert check(await client.get(path, headers=headers), 403)["code"] == "forbidden"
        refused = await client.post(
            f"/v1/staff/kiosks/{home.kiosk.id}/commands",
            json={"action": "open", "door_id": home.door_id, "reason": "let me in"},
            headers=headers,
        )
        assert check(refused, 403)["code"] == "forbidden"
    # The visit is untouched.
    view = check(
        await client.get(
            f"/v1/staff/work-orders/{visit['id']}", headers=home.people["staff"].headers
        )
    )
    assert view["state"] == "scheduled"


async def test_key_misuse_is_refused_or_flagged(
    client: Client, world: World, tmp_path: Path
) -> None:
    home = world.home
    staff = home.people["staff"]
    now = utc_now()
    key = await create_key(client, home)
    spare = await create_key(client, home, label="Master A", unit=None)
    # Keys go in free key compartments only.
    for compartment, code in (("A1", "not_a_key_compartment"),):
        problem = check(
            await client.post(
                f"/v1/staff/keys/{key['id']}/place",
                json={"compartment_id": home.compartments[compartment]},
                headers=staff.headers,
            ),
            409,
        )
        assert problem["code"] == code
    await place(client, home, spare["id"], None)
    occupied = check(
        await client.post(
            f"/v1/staff/keys/{key['id']}/place",
            json={"compartment_id": home.compartments["K1"]},
            headers=staff.headers,
        ),
        409,
    )
    assert occupied["code"] == "compartment_occupied"
    check(
        await client.post(f"/v1/staff/keys/{spare['id']}/retrieve", json={}, headers=staff.headers)
    )

    visit = await create_visit(
        client, home, starts_at=now - MINUTE, ends_at=now + HOUR, key_ids=[key["id"]]
    )
    await place(client, home, key["id"], visit["id"])
    phone = await phone_of(client, home.people["vendor"])
    kiosk = KioskSim.open(home.kiosk, tmp_path / "kiosk")
    await kiosk.sync(client)
    token = (
        await credentials_for(
            client, phone, visit["id"], target=f"compartment:{home.compartments['K1']}"
        )
    )["credentials"][0]["token"]
    assert kiosk.redeem(phone, token).granted
    await kiosk.upload(client)

    # A key already checked out cannot be placed (or lent to a lockout).
    problem = check(
        await client.post(
            f"/v1/staff/keys/{key['id']}/place",
            json={"compartment_id": home.compartments["K1"]},
            headers=staff.headers,
        ),
        409,
    )
    assert problem["code"] == "key_checked_out"

    # A return into a parcel compartment is not accepted: flagged to staff, key still out.
    kiosk.report("key.returned", {"key_id": key["id"], "compartment_id": home.compartments["A1"]})
    await kiosk.upload(client)
    still = check(await client.get(f"/v1/staff/keys/{key['id']}", headers=staff.headers))
    assert still["state"] == "checked_out"
    flagged = [e for e in await events_of(client, home) if e["type"] == "key.return_flagged"]
    assert [e["data"]["reason"] for e in flagged] == ["parcel_compartment"]
    assert flagged[0]["severity"] == "warning"
    # A second credential for the emptied compartment is not offered.
    await credentials_for(
        client, phone, visit["id"], target=f"compartment:{home.compartments['K1']}", status=404
    )

    # Online, the kiosk asks first: a parcel compartment or another kiosk's is refused.
    async def online_return(compartment_id: str, status: int) -> Any:
        return check(
            await client.post(
                "/v1/kiosk/key-returns",
                json={"key_id": key["id"], "compartment_id": compartment_id},
                headers=home.kiosk.headers(),
            ),
            status,
        )

    assert (await online_return(home.compartments["A1"], 409))["code"] == "not_a_key_compartment"
    assert (await online_return(world.other.compartments["K1"], 404))["code"] == "not_found"
    accepted = await online_return(home.compartments["K1"], 200)
    assert (accepted["state"], accepted["compartment_id"]) == (
        "in_compartment",
        home.compartments["K1"],
    )
    assert (await online_return(home.compartments["K1"], 409))["code"] == "compartment_occupied"
    assert (await online_return(home.compartments["B1"], 409))["code"] == "not_a_key_compartment"
    custody = check(await client.get(f"/v1/staff/keys/{key['id']}/custody", headers=staff.headers))[
        "items"
    ]
    assert [c["action"] for c in custody][-2:] == ["checked_out", "returned"]


async def test_override_needs_a_reason_and_one_target(client: Client, world: World) -> None:
    home = world.home
    bodies: list[dict[str, Any]] = [
        {"action": "open", "door_id": home.door_id},
        {"action": "open", "reason": "", "door_id": home.door_id},
        {"action": "close", "reason": "why", "door_id": home.door_id},
        {"action": "open", "reason": "   ", "door_id": home.door_id},
        {"action": "open", "reason": "no target"},
        {
            "action": "open",
            "reason": "two targets",
            "door_id": home.door_id,
            "compartment_id": home.compartments["A1"],
        },
    ]
    for body in bodies:
        problem = check(
            await client.post(
                f"/v1/staff/kiosks/{home.kiosk.id}/commands",
                json=body,
                headers=home.people["staff"].headers,
            ),
            400,
        )
        assert problem["code"] == "validation_error", body
    # A door of another kiosk is not found on this one.
    problem = check(
        await client.post(
            f"/v1/staff/kiosks/{home.kiosk.id}/commands",
            json={"action": "open", "door_id": world.other.door_id, "reason": "x"},
            headers=home.people["staff"].headers,
        ),
        404,
    )
    assert problem["code"] == "not_found"
    assert "override.used" not in types(await events_of(client, home))
