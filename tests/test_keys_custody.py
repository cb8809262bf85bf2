"""Key control: the key view, chain of custody, overdue alerts through `concierge policy run-once`,
and the resident-lockout credential, through the public APIs, the CLI and a real kiosk."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec

from backend.runtime import Runtime
from backend.settings import Settings
from tests.app_client import AppClient
from tests.processes import run_cli, settings_env
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
from tests.world import Site, World, check

Client = AppClient


async def policy_run(settings: Settings, **overrides: Any) -> list[dict[str, Any]]:
    env = {**settings_env(settings), "log_level": "WARNING", **overrides}
    done = await asyncio.to_thread(run_cli, ["policy", "run-once"], env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


async def policy_job(settings: Settings, **overrides: Any) -> list[dict[str, Any]]:
    """The policy engine in this process (what the server's scheduled job runs)."""
    import backend.app  # noqa: F401  (registers every feature's policy jobs)
    from backend.services.policy import run_once

    runtime = Runtime.create(msgspec.structs.replace(settings, **overrides))
    try:
        return await run_once(runtime)
    finally:
        await runtime.db.dispose()


def overdue(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in actions if a.get("action") == "key.overdue"]


async def checked_out_visit(
    client: Client, site: Site, tmp_path: Path
) -> tuple[dict[str, Any], dict[str, Any], KioskSim]:
    key = await create_key(client, site)
    now = utc_now()
    visit = await create_visit(
        client, site, starts_at=now - MINUTE, ends_at=now + HOUR, key_ids=[key["id"]]
    )
    await place(client, site, key["id"], visit["id"])
    phone = await phone_of(client, site.people["vendor"])
    token = (
        await credentials_for(
            client, phone, visit["id"], target=f"compartment:{site.compartments['K1']}"
        )
    )["credentials"][0]["token"]
    kiosk = KioskSim.open(site.kiosk, tmp_path / "kiosk")
    await kiosk.sync(client)
    assert kiosk.redeem(phone, token).granted
    await kiosk.upload(client)
    return key, visit, kiosk


async def test_key_view_has_the_contract_shape(client: Client, world: World) -> None:
    home = world.home
    key = await create_key(client, home)
    view = check(
        await client.get(f"/v1/staff/keys/{key['id']}", headers=home.people["staff"].headers)
    )
    for name in (
        "id",
        "label",
        "kind",
        "unit_id",
        "state",
        "compartment_id",
        "holder",
        "due_back_at",
    ):
        assert name in view
    assert (view["kind"], view["unit_id"], view["state"]) == ("unit", home.units["4B"], "in_office")
    listed = check(
        await client.get(
            f"/v1/staff/properties/{home.property_id}/keys",
            params={"state": "in_office"},
            headers=home.people["staff"].headers,
        )
    )
    assert [k["id"] for k in listed["items"]] == [key["id"]]


async def test_overdue_key_alerts_vendor_and_staff_repeating_until_returned(
    client: Client, world: World, settings: Settings, tmp_path: Path
) -> None:
    home = world.home
    staff, vendor = home.people["staff"], home.people["vendor"]
    check(
        await client.patch(
            f"/v1/staff/properties/{home.property_id}",
            json={"policy": {"key_grace_minutes": 0}},
            headers=staff.headers,
        )
    )
    key, visit, kiosk = await checked_out_visit(client, home, tmp_path)
    assert overdue(await policy_job(settings)) == []  # not due yet

    # Staff end the visit now: the key is due back at once (grace 0).
    check(
        await client.post(
            f"/v1/staff/work-orders/{visit['id']}/shorten",
            json={"ends_at": iso(utc_now())},
            headers=staff.headers,
        )
    )
    first = overdue(await policy_run(settings))
    assert [(a["key_id"], a["holder_user_id"], a["alert"]) for a in first] == [
        (key["id"], vendor.user_id, 1)
    ]
    view = check(await client.get(f"/v1/staff/keys/{key['id']}", headers=staff.headers))
    assert view["overdue"] is True
    alerts = [e for e in await events_of(client, home) if e["type"] == "key.overdue"]
    assert len(alerts) == 1
    assert alerts[0]["severity"] == "warning"
    assert "key.overdue" in types(await my_events(client, vendor))

    # Not again within the repeat interval; again once it has passed.
    assert overdue(await policy_job(settings)) == []
    again = overdue(await policy_job(settings, key_overdue_repeat_seconds=0))
    assert [a["alert"] for a in again] == [2]
    # The weekly report counts overdue keys, not repeated alerts.
    report = check(
        await client.get(
            f"/v1/staff/properties/{home.property_id}/reports/weekly", headers=staff.headers
        )
    )
    assert report["keys_overdue"] == 1

    # Returned: no more alerts, and the visit has ended for the resident.
    kiosk.report("key.returned", {"key_id": key["id"], "compartment_id": home.compartments["K1"]})
    await kiosk.upload(client)
    assert overdue(await policy_job(settings, key_overdue_repeat_seconds=0)) == []
    returned = [e for e in await events_of(client, home) if e["type"] == "key.returned"]
    assert returned[-1]["data"]["late"] is True
    assert "work_order.ended" in types(await my_events(client, home.people["resident"]))


async def test_resident_lockout_one_time_credential_for_their_own_key(
    client: Client, world: World, tmp_path: Path
) -> None:
    home = world.home
    staff, resident, neighbour = (
        home.people["staff"],
        home.people["resident"],
        home.people["neighbour"],
    )
    key = await create_key(client, home)  # the 4B key
    # Not placed yet: nothing to hand over.
    problem = check(
        await client.post(
            f"/v1/staff/keys/{key['id']}/lockout",
            json={"user_id": resident.user_id},
            headers=staff.headers,
        ),
        409,
    )
    assert problem["code"] == "key_unavailable"
    await place(client, home, key["id"], None)
    # Only a resident of that key's unit.
    check(
        await client.post(
            f"/v1/staff/keys/{key['id']}/lockout",
            json={"user_id": neighbour.user_id},
            headers=staff.headers,
        ),
        404,
    )
    check(
        await client.post(
            f"/v1/staff/keys/{key['id']}/lockout",
            json={"user_id": resident.user_id},
            headers=staff.headers,
        )
    )
    assert "key.lockout_authorised" in types(await my_events(client, resident))

    neighbour_phone = await phone_of(client, neighbour)
    check(
        await client.post(
            f"/v1/keys/{key['id']}/lockout-credential",
            json={"device_id": neighbour_phone.device_id},
            headers=neighbour.headers,
        ),
        404,
    )
    phone = await phone_of(client, resident)
    issued = check(
        await client.post(
            f"/v1/keys/{key['id']}/lockout-credential",
            json={"device_id": phone.device_id},
            headers=resident.headers,
        ),
        201,
    )["credentials"]
    assert [c["target"] for c in issued] == [f"compartment:{home.compartments['K1']}"]
    # One time: a second credential is not issued.
    check(
        await client.post(
            f"/v1/keys/{key['id']}/lockout-credential",
            json={"device_id": phone.device_id},
            headers=resident.headers,
        ),
        404,
    )
    kiosk = KioskSim.open(home.kiosk, tmp_path / "kiosk")
    await kiosk.sync(client)
    assert kiosk.redeem(phone, issued[0]["token"]).granted
    await kiosk.upload(client)
    held = check(await client.get(f"/v1/staff/keys/{key['id']}", headers=staff.headers))
    assert (held["state"], held["holder"]["user_id"]) == ("checked_out", resident.user_id)
    assert [
        k["id"] for k in check(await client.get("/v1/keys", headers=resident.headers))["items"]
    ] == [key["id"]]

    # Handed back at the desk; later lost. Every movement is in the custody history.
    check(
        await client.post(
            f"/v1/staff/keys/{key['id']}/retrieve", json={"note": "at desk"}, headers=staff.headers
        )
    )
    check(await client.post(f"/v1/staff/keys/{key['id']}/lost", json={}, headers=staff.headers))
    problem = check(
        await client.post(
            f"/v1/staff/keys/{key['id']}/place",
            json={"compartment_id": home.compartments["K1"]},
            headers=staff.headers,
        ),
        409,
    )
    assert problem["code"] == "key_unavailable"
    custody = check(await client.get(f"/v1/staff/keys/{key['id']}/custody", headers=staff.headers))[
        "items"
    ]
    assert [c["action"] for c in custody] == [
        "created",
        "placed",
        "lockout_authorised",
        "checked_out",
        "retrieved",
        "lost",
    ]
    assert custody[3]["user_id"] == resident.user_id
    page = check(
        await client.get(
            f"/v1/staff/keys/{key['id']}/custody", params={"limit": 2}, headers=staff.headers
        )
    )
    assert len(page["items"]) == 2
    rest = check(
        await client.get(
            f"/v1/staff/keys/{key['id']}/custody",
            params={"cursor": page["next_cursor"]},
            headers=staff.headers,
        )
    )
    assert [c["action"] for c in page["items"] + rest["items"]] == [c["action"] for c in custody]
