"""Parcels under attack and bad input: intruders get the documented error (404, never 403, for
what they may not see), bad scans change nothing, PIN brute force locks out with events."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.app_client import AppClient
from tests.test_parcels_lifecycle import (
    audit_events,
    compartment_states,
    deliver,
    deposit,
    new_tracking,
)
from tests.world import Site, World, add_compartment, check


async def waiting_parcel(client: AppClient, site: Site, size: str = "S") -> dict[str, Any]:
    parcel: dict[str, Any] = await deliver(client, site, size=size)
    await deposit(client, site, parcel["parcel_id"])
    return parcel


async def all_parcels(client: AppClient, site: Site) -> list[dict[str, Any]]:
    body = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/parcels",
            headers=site.people["staff"].headers,
        )
    )
    return list(body["items"])


INTRUDERS = [("neighbour", "home"), ("vendor", "home"), ("resident", "other"), ("staff", "other")]


async def test_phone_intruders_cannot_see_a_parcel(
    client: AppClient,
    world: World,
) -> None:
    parcel = await waiting_parcel(client, world.home)
    for intruder, where in INTRUDERS:
        person = getattr(world, where).people[intruder]
        listed = await client.get("/v1/parcels", headers=person.headers)
        if listed.status_code == 200:
            assert parcel["parcel_id"] not in [p["id"] for p in listed.json()["items"]]
        else:
            assert listed.status_code == 403, (intruder, where)
        response = await client.get(f"/v1/parcels/{parcel['parcel_id']}", headers=person.headers)
        assert response.status_code in (403, 404), (intruder, where)
        if response.status_code == 404:
            assert response.json()["code"] == "not_found"


STAFF_ROUTES = [
    ("get", "/v1/staff/parcels/{parcel}"),
    ("get", "/v1/staff/parcels/{parcel}/custody"),
    ("post", "/v1/staff/parcels/{parcel}/overflow"),
    ("post", "/v1/staff/parcels/{parcel}/return"),
    ("post", "/v1/staff/parcels/{parcel}/handover"),
    ("get", "/v1/staff/properties/{property}/parcels"),
    ("post", "/v1/staff/properties/{property}/parcels"),
    ("get", "/v1/staff/properties/{property}/occupancy"),
    ("get", "/v1/staff/properties/{property}/reports/weekly"),
]


async def test_other_property_staff_get_not_found(
    client: AppClient,
    world: World,
) -> None:
    parcel = await waiting_parcel(client, world.home)
    office = {"carrier": "UPS", "tracking": "X1", "unit": "4B"}
    for method, path in STAFF_ROUTES:
        url = path.format(parcel=parcel["parcel_id"], property=world.home.property_id)
        extra = {"json": office} if path.endswith("/parcels") and method == "post" else {}
        intruder = world.other.people["staff"]
        response = await getattr(client, method)(url, headers=intruder.headers, **extra)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["code"] == "not_found"
        # Residents are not staff at all.
        resident = world.home.people["resident"].headers
        response = await getattr(client, method)(url, headers=resident, **extra)
        assert response.status_code == 403, path
    # Nothing moved.
    assert (await compartment_states(client, world.home))["A1"] == "occupied"
    (still,) = await all_parcels(client, world.home)
    assert still["state"] == "deposited"


async def test_another_kiosk_cannot_confirm_or_cancel(
    client: AppClient,
    world: World,
) -> None:
    parcel = await deliver(client, world.home, size="M")
    for action in ("deposited", "cancel"):
        response = await client.post(
            f"/v1/kiosk/deliveries/{parcel['parcel_id']}/{action}",
            json={},
            headers=world.other.kiosk.headers(),
        )
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    # The parcel is untouched, and the attempts are on record at the intruding kiosk's property.
    (still,) = await all_parcels(client, world.home)
    assert still["state"] == "assigned"
    assert (await compartment_states(client, world.home))["B1"] == "reserved"
    rejected = [
        e for e in await audit_events(client, world.other) if e["type"] == "kiosk.request_rejected"
    ]
    assert [e["data"]["reason"] for e in rejected] == ["foreign_parcel", "foreign_parcel"]
    assert {e["data"]["kiosk_id"] for e in rejected} == {world.other.kiosk.id}
    assert not [
        e for e in await audit_events(client, world.home) if e["type"] == "kiosk.request_rejected"
    ]


async def test_kiosk_cannot_post_for_a_compartment_of_another_kiosk(
    client: AppClient,
    world: World,
) -> None:
    body = await deliver(
        client, world.home, size="S", compartment_id=world.other.compartments["A1"], status=404
    )
    assert body["code"] == "not_found"
    assert await all_parcels(client, world.home) == []
    assert (await compartment_states(client, world.other))["A1"] == "free"
    rejected = [
        e for e in await audit_events(client, world.home) if e["type"] == "kiosk.request_rejected"
    ]
    assert [e["data"]["reason"] for e in rejected] == ["foreign_compartment"]


BAD_SCANS = [
    ({"unit": "99Z"}, 404, "unknown_unit"),
    ({"tracking": ""}, 400, "validation_error"),
    ({"tracking": "   "}, 400, "validation_error"),
    ({"tracking": "1Z" + "9" * 100}, 400, "validation_error"),
    ({"tracking": "1Z\n99"}, 400, "validation_error"),
    ({"size": "XXL"}, 400, "validation_error"),
    ({"size": None}, 400, "validation_error"),
    ({"carrier": ""}, 400, "validation_error"),
    ({"unit": ""}, 400, "validation_error"),
    ({"unit": "4B" * 40}, 400, "validation_error"),
    ({"compartment": "A1"}, 400, "validation_error"),
    ({"dimensions": {"length_cm": -1, "width_cm": 10, "height_cm": 10}}, 400, "validation_error"),
]


async def test_bad_scans_are_refused_and_nothing_is_written(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    for body, status, code in BAD_SCANS:
        scan = {"carrier": "UPS", "tracking": new_tracking(), "unit": "4B", "size": "S", **body}
        response = await client.post(
            "/v1/kiosk/deliveries", json=scan, headers=site.kiosk.headers()
        )
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code
    assert await all_parcels(client, site) == []
    assert set((await compartment_states(client, site)).values()) == {"free"}
    assert not [e for e in await audit_events(client, site) if e["type"].startswith("parcel.")]


async def test_unauthenticated_kiosk_calls_are_refused(
    client: AppClient,
    world: World,
) -> None:
    scan = {"carrier": "UPS", "tracking": new_tracking(), "unit": "4B", "size": "S"}
    response = await client.post("/v1/kiosk/deliveries", json=scan)
    assert response.status_code == 401
    staff_token = world.home.people["staff"].headers
    response = await client.post("/v1/kiosk/deliveries", json=scan, headers=staff_token)
    assert response.status_code == 401
    headers = world.home.kiosk.headers()
    check(await client.post("/v1/kiosk/deliveries", json=scan, headers=headers), 201)
    replay = await client.post("/v1/kiosk/deliveries", json=scan, headers=headers)
    assert replay.status_code == 401  # an assertion works once


async def test_confirming_a_cancelled_delivery_conflicts(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    parcel = await deliver(client, site, size="S")
    check(
        await client.post(
            f"/v1/kiosk/deliveries/{parcel['parcel_id']}/cancel",
            json={"reason": "door_never_closed"},
            headers=site.kiosk.headers(),
        )
    )
    body = check(
        await client.post(
            f"/v1/kiosk/deliveries/{parcel['parcel_id']}/deposited",
            json={},
            headers=site.kiosk.headers(),
        ),
        409,
    )
    assert body["code"] == "parcel_state_conflict"
    # A deposited parcel cannot be cancelled by the kiosk.
    other = await waiting_parcel(client, site, size="M")
    body = check(
        await client.post(
            f"/v1/kiosk/deliveries/{other['parcel_id']}/cancel", headers=site.kiosk.headers()
        ),
        409,
    )
    assert body["code"] == "parcel_state_conflict"
    # The courier scans the cancelled parcel again: it gets a compartment again, same parcel.
    again = await deliver(client, site, size="S", tracking=parcel["tracking"])
    assert again["parcel_id"] == parcel["parcel_id"]
    assert again["state"] == "assigned"


async def test_duplicate_scans_are_one_parcel(client: AppClient, world: World) -> None:
    site = world.home
    tracking = new_tracking()
    first = await deliver(client, site, size="S", tracking=tracking)
    second = await deliver(client, site, size="S", tracking=tracking)
    assert second["parcel_id"] == first["parcel_id"]
    assert second["compartment"] == first["compartment"]
    await deposit(client, site, first["parcel_id"])
    third = await deliver(client, site, size="S", tracking=tracking)
    assert third["parcel_id"] == first["parcel_id"]
    assert third["state"] == "deposited"
    # Concurrent duplicates of a new scan: still one parcel.
    tracking2 = new_tracking()
    scan = {"carrier": "UPS", "tracking": tracking2, "unit": "4B", "size": "M"}
    responses = await asyncio.gather(
        *(
            client.post("/v1/kiosk/deliveries", json=scan, headers=site.kiosk.headers())
            for _ in range(5)
        )
    )
    assert [r.status_code for r in responses] == [201] * 5
    assert sorted(r.headers["x-parcel-created"] for r in responses) == ["false"] * 4 + ["true"]
    assert len({r.json()["parcel_id"] for r in responses}) == 1
    assert len(await all_parcels(client, site)) == 2
    # The same tracking for another unit at this kiosk is refused, not a second parcel.
    conflict = await deliver(client, site, size="S", tracking=tracking, unit="1A", status=409)
    assert conflict["code"] == "parcel_state_conflict"


async def test_concurrent_deliveries_never_share_a_compartment(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    for i in range(7):
        await add_compartment(client, site, f"M{i}", "M")
    parcel_compartments = 3 + 7
    attempts = 14
    responses = await asyncio.gather(
        *(
            client.post(
                "/v1/kiosk/deliveries",
                json={"carrier": "UPS", "tracking": new_tracking(), "unit": "4B", "size": "S"},
                headers=site.kiosk.headers(),
            )
            for _ in range(attempts)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * parcel_compartments + [409] * (attempts - parcel_compartments)
    taken = [r.json()["compartment"]["id"] for r in responses if r.status_code == 201]
    assert len(set(taken)) == parcel_compartments
    assert site.compartments["K1"] not in taken  # key compartments never take parcels
    refused = [r.json() for r in responses if r.status_code == 409]
    assert {b["code"] for b in refused} == {"no_compartment_fits"}
    # The database agrees: one active parcel per compartment, every parcel compartment reserved.
    parcels = await all_parcels(client, site)
    assert len(parcels) == parcel_compartments
    assert len({p["compartment"]["id"] for p in parcels}) == parcel_compartments
    states = await compartment_states(client, site)
    assert states["K1"] == "free"
    assert {v for k, v in states.items() if k != "K1"} == {"reserved"}


async def test_pin_brute_force_locks_out_and_alerts_staff(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    staff = site.people["staff"]
    check(
        await client.patch(
            f"/v1/staff/properties/{site.property_id}",
            json={"policy": {"pin_max_attempts": 3, "pin_lockout_minutes": 10}},
            headers=staff.headers,
        )
    )
    parcel = await waiting_parcel(client, site)
    pin = check(
        await client.get(
            f"/v1/parcels/{parcel['parcel_id']}", headers=site.people["resident"].headers
        )
    )["pickup_pin"]
    wrong = [f"{n:06d}" for n in range(1000) if f"{n:06d}" != pin]

    async def attempt(unit: str, code: str) -> dict[str, Any]:
        body: dict[str, Any] = check(
            await client.post(
                "/v1/kiosk/pickups", json={"unit": unit, "pin": code}, headers=site.kiosk.headers()
            )
        )
        return body

    for code in wrong[:3]:
        assert (await attempt("4B", code))["reason"] == "wrong_pin"
    locked = await attempt("4B", pin)  # the right PIN, too late
    assert locked["granted"] is False
    assert locked["reason"] == "locked_out"
    assert 0 < locked["retry_after_seconds"] <= 600
    assert (await compartment_states(client, site))["A1"] == "occupied"
    # Another unit at the same kiosk has its own budget.
    assert (await attempt("1A", wrong[3]))["reason"] == "wrong_pin"

    events = await audit_events(client, site)
    failed = [e for e in events if e["type"] == "pin.failed"]
    assert [e["data"]["reason"] for e in failed] == ["wrong_pin"] * 3 + ["locked_out", "wrong_pin"]
    assert all(pin not in str(e["data"]) for e in events)
    lockouts = [e for e in events if e["type"] == "pin.locked_out"]
    assert len(lockouts) == 1
    assert lockouts[0]["data"]["unit"] == "4B"
    assert not [e for e in events if e["type"] == "pin.burst"]

    # Spraying PINs over many units exhausts the kiosk's budget (4 x 3): staff are alerted and
    # the kiosk refuses PINs for every unit for a while.
    for i, code in enumerate(wrong[4:12]):
        await attempt(f"{i}X", code)
    bursts = [e for e in await audit_events(client, site) if e["type"] == "pin.burst"]
    assert len(bursts) == 1
    assert bursts[0]["severity"] == "warning"
    assert bursts[0]["data"]["kiosk_id"] == site.kiosk.id
    assert (await attempt("1A", wrong[20]))["reason"] == "locked_out"
    report = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/reports/weekly", headers=staff.headers
        )
    )
    assert report["failed_pin_attempts"] == 14  # 12 wrong PINs and 2 refused while locked out
