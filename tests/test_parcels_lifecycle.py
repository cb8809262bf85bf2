"""A parcel's whole life through the public APIs: intake, deposit, the resident's view, PIN pickup,
overflow, return, office intake, staff lists, custody history, occupancy and the weekly report."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

from tests.app_client import AppClient
from tests.world import Site, World, add_compartment, check

_tracking = itertools.count(1)


def new_tracking() -> str:
    return f"1Z999AA1{next(_tracking):010d}"


async def deliver(
    client: AppClient,
    site: Site,
    *,
    unit: str = "4B",
    size: str = "M",
    tracking: str | None = None,
    status: int = 201,
    **extra: Any,
) -> Any:
    body = {"carrier": "UPS", "tracking": tracking or new_tracking(), "unit": unit, "size": size}
    body.update(extra)
    return check(
        await client.post("/v1/kiosk/deliveries", json=body, headers=site.kiosk.headers()), status
    )


async def deposit(client: AppClient, site: Site, parcel_id: str) -> Any:
    return check(
        await client.post(
            f"/v1/kiosk/deliveries/{parcel_id}/deposited", json={}, headers=site.kiosk.headers()
        )
    )


async def audit_events(client: AppClient, site: Site) -> list[dict[str, Any]]:
    body = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/audit?limit=1000",
            headers=site.people["staff"].headers,
        )
    )
    return list(body["items"])


async def compartment_states(client: AppClient, site: Site) -> dict[str, str]:
    body = check(
        await client.get(
            f"/v1/staff/kiosks/{site.kiosk.id}/compartments", headers=site.people["staff"].headers
        )
    )
    return {c["label"]: c["state"] for c in body["items"]}


async def test_intake_deposit_and_pin_pickup(client: AppClient, world: World) -> None:
    site = world.home
    resident, neighbour, staff = (site.people[k] for k in ("resident", "neighbour", "staff"))
    tracking = new_tracking()

    assigned = await deliver(client, site, tracking=tracking, size="M")
    assert assigned["state"] == "assigned"
    assert assigned["compartment"] == {"id": site.compartments["B1"], "label": "B1"}
    parcel_id = assigned["parcel_id"]
    assert (await compartment_states(client, site))["B1"] == "reserved"

    # Not yet deposited: no PIN, nobody told.
    early = check(await client.get(f"/v1/parcels/{parcel_id}", headers=resident.headers))
    assert early["state"] == "assigned"
    assert early["pickup_pin"] is None

    deposited = await deposit(client, site, parcel_id)
    assert deposited["state"] == "deposited"
    assert (await deposit(client, site, parcel_id))["state"] == "deposited"  # idempotent
    assert (await compartment_states(client, site))["B1"] == "occupied"

    mine = check(await client.get("/v1/parcels", headers=resident.headers))
    assert [p["id"] for p in mine["items"]] == [parcel_id]
    detail = check(await client.get(f"/v1/parcels/{parcel_id}", headers=resident.headers))
    pin = detail["pickup_pin"]
    assert isinstance(pin, str)
    assert len(pin) == 6
    assert pin.isdigit()
    assert detail["compartment"]["label"] == "B1"
    assert detail["unit"] == "4B"
    assert detail["tracking"] == tracking
    assert detail["carrier"] == "UPS"
    # The neighbour (unit 1A) neither lists nor reads it.
    assert check(await client.get("/v1/parcels", headers=neighbour.headers))["items"] == []
    check(await client.get(f"/v1/parcels/{parcel_id}", headers=neighbour.headers), 404)
    # Staff see the PIN too.
    staff_view = check(await client.get(f"/v1/staff/parcels/{parcel_id}", headers=staff.headers))
    assert staff_view["pickup_pin"] == pin

    # The deposit event is for unit 4B, carries where and since when, never the PIN.
    events = await audit_events(client, site)
    deposit_events = [e for e in events if e["type"] == "parcel.deposited"]
    assert len(deposit_events) == 1
    data = deposit_events[0]["data"]
    assert data["parcel_id"] == parcel_id
    assert data["unit_id"] == site.units["4B"]
    assert data["compartment_id"] == site.compartments["B1"]
    assert data["kiosk_id"] == site.kiosk.id
    assert data["tracking"] == tracking
    assert data["carrier"] == "UPS"
    assert all(pin not in str(e["data"]) for e in events)

    wrong = "000000" if pin != "000000" else "111111"
    pickup = "/v1/kiosk/pickups"
    denied = check(
        await client.post(pickup, json={"unit": "4B", "pin": wrong}, headers=site.kiosk.headers())
    )
    assert denied == {
        "granted": False,
        "reason": "wrong_pin",
        "compartments": [],
        "retry_after_seconds": None,
    }
    other_unit = check(
        await client.post(pickup, json={"unit": "1A", "pin": pin}, headers=site.kiosk.headers())
    )
    assert other_unit["granted"] is False
    granted = check(
        await client.post(pickup, json={"unit": "4B", "pin": pin}, headers=site.kiosk.headers())
    )
    assert granted["granted"] is True
    assert granted["reason"] == "pin_ok"
    assert granted["compartments"] == [
        {"id": site.compartments["B1"], "label": "B1", "parcel_id": parcel_id}
    ]
    after = check(await client.get(f"/v1/parcels/{parcel_id}", headers=resident.headers))
    assert after["state"] == "picked_up"
    assert after["pickup_pin"] is None
    assert (await compartment_states(client, site))["B1"] == "free"
    # A PIN works once.
    again = check(
        await client.post(pickup, json={"unit": "4B", "pin": pin}, headers=site.kiosk.headers())
    )
    assert again["granted"] is False

    history = check(
        await client.get(f"/v1/staff/parcels/{parcel_id}/custody", headers=staff.headers)
    )
    types = [e["type"] for e in history["items"]]
    assert types == ["parcel.announced", "parcel.deposited", "parcel.picked_up"]
    assert history["items"][0]["actor"] == f"kiosk:{site.kiosk.id}"
    assert history["items"][2]["data"]["channel"] == "pin"


async def test_parcels_of_one_unit_open_together(client: AppClient, world: World) -> None:
    site = world.home
    first = await deliver(client, site, size="S")
    second = await deliver(client, site, size="L", unit=" 4b ")  # labels are read leniently
    await deposit(client, site, first["parcel_id"])
    await deposit(client, site, second["parcel_id"])
    resident = site.people["resident"]
    pins = {
        check(await client.get(f"/v1/parcels/{p['parcel_id']}", headers=resident.headers))[
            "pickup_pin"
        ]
        for p in (first, second)
    }
    assert len(pins) == 1  # one PIN per unit at a kiosk
    granted = check(
        await client.post(
            "/v1/kiosk/pickups",
            json={"unit": "4b", "pin": pins.pop()},
            headers=site.kiosk.headers(),
        )
    )
    assert granted["granted"] is True
    assert sorted(c["label"] for c in granted["compartments"]) == ["A1", "C1"]


async def test_smallest_fitting_compartment_and_no_compartment_fits(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    small = await deliver(client, site, size="S")
    assert small["compartment"]["label"] == "A1"
    # No S left: the next smallest that fits is M.
    next_small = await deliver(client, site, size="S")
    assert next_small["compartment"]["label"] == "B1"
    # Dimensions map to a size class (40x35x10 cm is M; only L is free, so L).
    by_dims = await deliver(
        client,
        site,
        size=None,
        dimensions={"length_cm": 40, "width_cm": 35, "height_cm": 10},
    )
    assert by_dims["compartment"]["label"] == "C1"
    assert by_dims["size"] == "M"
    # Now nothing is free.
    full = await deliver(client, site, size="S", status=409)
    assert full["code"] == "no_compartment_fits"
    assert full["free_sizes"] == []
    # Cancel frees C1: an S asks and is told L is free in `free_sizes` only when S/M are not.
    check(
        await client.post(
            f"/v1/kiosk/deliveries/{by_dims['parcel_id']}/cancel",
            json={},
            headers=site.kiosk.headers(),
        )
    )
    assert (await compartment_states(client, site))["C1"] == "free"
    check(
        await client.post(
            f"/v1/kiosk/deliveries/{by_dims['parcel_id']}/cancel", headers=site.kiosk.headers()
        )
    )  # idempotent
    xl = await deliver(client, site, size="XL", status=409)
    assert xl["code"] == "no_compartment_fits"
    assert xl["free_sizes"] == []
    # A huge parcel fits nowhere.
    huge = await deliver(
        client,
        site,
        size=None,
        dimensions={"length_cm": 200, "width_cm": 100, "height_cm": 100},
        status=409,
    )
    assert huge["code"] == "no_compartment_fits"
    # Free L only, ask for M: 409 names L.
    taken_b1 = next_small["parcel_id"]
    check(
        await client.post(
            f"/v1/kiosk/deliveries/{taken_b1}/deposited", json={}, headers=site.kiosk.headers()
        )
    )
    # (A1 and B1 hold parcels; C1 is free.) An S goes to C1 rather than failing.
    assert (await deliver(client, site, size="S"))["compartment"]["label"] == "C1"


async def test_no_fit_lists_larger_free_sizes_and_office_intake(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    staff = site.people["staff"]
    await deliver(client, site, size="S")  # A1
    await deliver(client, site, size="M")  # B1
    # L is free, so an L fits; but an XL does not, with nothing larger free.
    body = await deliver(client, site, size="XL", status=409)
    assert body["free_sizes"] == []
    # Take C1 with an L, then free B1: an S finds B1 (M) as smallest.
    # Ask for something larger than anything free: M and L are free-checked.
    office = await deliver(client, site, size="XL", to_office=True)
    assert office["state"] == "overflowed"
    assert office["compartment"] is None
    assert office["location"] == "office"
    listed = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/parcels?state=overflowed",
            headers=staff.headers,
        )
    )
    assert [p["id"] for p in listed["items"]] == [office["parcel_id"]]
    handed = check(
        await client.post(
            f"/v1/staff/parcels/{office['parcel_id']}/handover", headers=staff.headers
        )
    )
    assert handed["state"] == "picked_up"
    # Staff can also record an office hand-over directly.
    direct = check(
        await client.post(
            f"/v1/staff/properties/{site.property_id}/parcels",
            json={"carrier": "DHL", "tracking": "JD0001", "unit": "1A", "size": "L"},
            headers=staff.headers,
        ),
        201,
    )
    assert direct["state"] == "overflowed"
    assert direct["unit"] == "1A"


async def test_free_sizes_names_larger_free_compartments(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    # A second M compartment that we fill, so M is full while L stays free... simpler: fill A1
    # and B1 and ask for S with compartment_id of a full one.
    await add_compartment(client, site, "D1", "XL")
    a1 = await deliver(client, site, size="S")
    assert a1["compartment"]["label"] == "A1"
    # Asking for A1 itself (taken) does not fit; larger free sizes are M, L, XL.
    body = await deliver(client, site, size="S", compartment_id=site.compartments["A1"], status=409)
    assert body["code"] == "no_compartment_fits"
    assert body["free_sizes"] == ["M", "L", "XL"]


async def test_overflow_return_and_staff_lists(client: AppClient, world: World) -> None:
    site = world.home
    staff, resident = site.people["staff"], site.people["resident"]
    one = await deliver(client, site, size="S")
    two = await deliver(client, site, size="M", unit="1A")
    await deposit(client, site, one["parcel_id"])
    await deposit(client, site, two["parcel_id"])

    by_unit = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/parcels?unit=4B&state=deposited",
            headers=staff.headers,
        )
    )
    assert [p["id"] for p in by_unit["items"]] == [one["parcel_id"]]
    by_unit_id = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/parcels?unit={site.units['1A']}",
            headers=staff.headers,
        )
    )
    assert [p["id"] for p in by_unit_id["items"]] == [two["parcel_id"]]
    by_tracking = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/parcels?tracking={two['tracking']}",
            headers=staff.headers,
        )
    )
    assert [p["id"] for p in by_tracking["items"]] == [two["parcel_id"]]
    old = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/parcels?older_than_days=3",
            headers=staff.headers,
        )
    )
    assert old["items"] == []

    moved = check(
        await client.post(
            f"/v1/staff/parcels/{one['parcel_id']}/overflow",
            json={"location": "leasing office shelf 2"},
            headers=staff.headers,
        )
    )
    assert moved["state"] == "overflowed"
    assert moved["location"] == "leasing office shelf 2"
    assert moved["compartment"] is not None  # where it was, for the record
    assert (await compartment_states(client, site))["A1"] == "free"
    seen = check(await client.get(f"/v1/parcels/{one['parcel_id']}", headers=resident.headers))
    assert seen["state"] == "overflowed"
    assert seen["location"] == "leasing office shelf 2"
    assert seen["pickup_pin"] is None
    # Overflow twice is the same; returning an overflowed parcel works.
    check(
        await client.post(f"/v1/staff/parcels/{one['parcel_id']}/overflow", headers=staff.headers)
    )
    returned = check(
        await client.post(
            f"/v1/staff/parcels/{one['parcel_id']}/return",
            json={"reason": "refused"},
            headers=staff.headers,
        )
    )
    assert returned["state"] == "returned"
    back = check(
        await client.post(f"/v1/staff/parcels/{two['parcel_id']}/return", headers=staff.headers)
    )
    assert back["state"] == "returned"
    assert (await compartment_states(client, site))["B1"] == "free"
    conflict = check(
        await client.post(f"/v1/staff/parcels/{two['parcel_id']}/overflow", headers=staff.headers),
        409,
    )
    assert conflict["code"] == "parcel_state_conflict"

    events = await audit_events(client, site)
    types = [e["type"] for e in events if e["data"].get("parcel_id") == one["parcel_id"]]
    assert types == [
        "parcel.announced",
        "parcel.deposited",
        "parcel.overflowed",
        "parcel.returned",
    ]


async def test_occupancy_and_weekly_report(client: AppClient, world: World) -> None:
    site = world.home
    staff = site.people["staff"]
    a = await deliver(client, site, size="S")
    b = await deliver(client, site, size="M")
    await deposit(client, site, a["parcel_id"])
    await deposit(client, site, b["parcel_id"])
    pin = check(
        await client.get(f"/v1/parcels/{a['parcel_id']}", headers=site.people["resident"].headers)
    )["pickup_pin"]
    wrong = "000000" if pin != "000000" else "111111"
    for candidate in (wrong, pin):
        check(
            await client.post(
                "/v1/kiosk/pickups",
                json={"unit": "4B", "pin": candidate},
                headers=site.kiosk.headers(),
            )
        )

    occupancy = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/occupancy", headers=staff.headers
        )
    )
    cells = {(c["kiosk_id"], c["size"]): c for c in occupancy["items"]}
    assert cells[(site.kiosk.id, "S")]["occupied"] == 0  # both of 4B's parcels were picked up
    assert cells[(site.kiosk.id, "L")] == {
        "kiosk_id": site.kiosk.id,
        "size": "L",
        "occupied": 0,
        "total": 1,
        "free": 1,
        "nearly_full": False,
    }
    c = await deliver(client, site, size="L", unit="1A")
    occupancy = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/occupancy", headers=staff.headers
        )
    )
    assert any("size L nearly full" in w for w in occupancy["warnings"])
    warned = [e for e in await audit_events(client, site) if e["type"] == "kiosk.nearly_full"]
    assert [(e["data"]["size"], e["data"]["occupied"], e["data"]["total"]) for e in warned] == [
        ("S", 1, 1),
        ("M", 1, 1),
        ("L", 1, 1),
    ]
    assert all(e["severity"] == "warning" for e in warned)

    report = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/reports/weekly", headers=staff.headers
        )
    )
    assert set(report) == {
        "period",
        "deposits",
        "pickups",
        "unclaimed",
        "occupancy",
        "pickup_minutes",
        "failed_pin_attempts",
        "overflow_moves",
        "returns",
        "keys_overdue",
        "staff_minutes_saved",
    }
    assert report["deposits"] == 2
    assert report["pickups"] == 2
    assert report["failed_pin_attempts"] == 1
    assert report["unclaimed"] == []
    assert report["pickup_minutes"]["p50"] is not None
    assert report["staff_minutes_saved"] == 12
    occ = {(o["kiosk_id"], o["size"]): o for o in report["occupancy"]}
    assert occ[(site.kiosk.id, "L")] == {
        "kiosk_id": site.kiosk.id,
        "size": "L",
        "occupied": 1,
        "total": 1,
    }
    assert c["state"] == "assigned"

    response = await client.get(
        f"/v1/staff/properties/{site.property_id}/reports/weekly?format=csv",
        headers=staff.headers,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = {r[0]: r[1] for r in csv.reader(io.StringIO(response.text)) if len(r) == 2}
    assert rows["deposits"] == "2"
    assert rows["failed_pin_attempts"] == "1"

    past = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/reports/weekly?start=2020-01-06",
            headers=staff.headers,
        )
    )
    assert past["deposits"] == 0
    assert past["period"]["start"].startswith("2020-01-06")
    assert past["period"]["end"].startswith("2020-01-13")
