"""Door and tamper alarms, the manual override over the kiosk channel, break-glass emergency access."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import websockets

from backend.settings import Settings
from kiosk.assertion import sign_assertion
from tests.app_client import AppClient
from tests.live_server import LiveServer, live, live_world  # noqa: F401  (fixtures)
from tests.realtime_helpers import connect, recv, recv_event
from tests.test_keys_custody import policy_job, policy_run
from tests.vendor_support import KioskSim, events_of, my_events, phone_of, types
from tests.world import World, check, enroll_kiosk, invite

Client = AppClient


def by_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


async def test_forced_door_tamper_and_held_open_alert_staff_only(
    client: Client, world: World, settings: Settings, tmp_path: Path
) -> None:
    home = world.home
    kiosk = KioskSim.open(home.kiosk, tmp_path / "kiosk")
    await kiosk.sync(client)
    kiosk.report("door.forced", {"door_id": home.door_id})
    kiosk.report("kiosk.tamper", {"detail": "enclosure opened"})
    kiosk.report("door.held_open", {"door_id": home.door_id, "open_seconds": 45})
    kiosk.report("compartment.opened", {"compartment_id": home.compartments["B1"]})
    assert (await kiosk.upload(client))["stored"] == 4

    trail = await events_of(client, home)
    forced = by_type(trail, "door.forced")
    assert len(forced) == 1
    assert forced[0]["severity"] == "critical"
    assert forced[0]["data"]["door_id"] == home.door_id
    assert forced[0]["data"]["kiosk_id"] == home.kiosk.id
    tamper = by_type(trail, "kiosk.tamper")
    assert [(e["severity"], e["data"]["detail"]) for e in tamper] == [
        ("critical", "enclosure opened")
    ]
    assert [e["severity"] for e in by_type(trail, "door.held_open")] == ["warning"]
    assert (
        by_type(trail, "compartment.opened")[0]["data"]["compartment_id"]
        == (home.compartments["B1"])
    )
    # Alarms go to the property's staff, not to residents or vendors.
    staff_sees = types(await my_events(client, home.people["staff"]))
    assert "door.forced" in staff_sees
    assert "kiosk.tamper" in staff_sees
    for person in ("resident", "vendor"):
        sees = types(await my_events(client, home.people[person]))
        assert "door.forced" not in sees
        assert "kiosk.tamper" not in sees
    # The other property's staff see nothing of it.
    assert "door.forced" not in types(await my_events(client, world.other.people["staff"]))

    # Held open: repeated while the door stays open (after the repeat interval), not after close.
    held = [a for a in await policy_job(settings) if a.get("action") == "door.held_open"]
    assert held == []
    held = [
        a
        for a in await policy_run(settings, door_held_open_repeat_seconds=0)
        if a.get("action") == "door.held_open"
    ]
    assert [a["door_id"] for a in held] == [home.door_id]
    kiosk.report("door.closed", {"door_id": home.door_id})
    await kiosk.upload(client)
    held = [
        a
        for a in await policy_job(settings, door_held_open_repeat_seconds=0)
        if a.get("action") == "door.held_open"
    ]
    assert held == []
    assert len(by_type(await events_of(client, home), "door.held_open")) == 2


async def _kiosk_channel(server: LiveServer, world: World) -> Any:
    kiosk = world.home.kiosk
    ws = await websockets.connect(server.ws_url + "/v1/kiosk/channel", open_timeout=10)
    await ws.send(json.dumps({"type": "auth", "assertion": sign_assertion(kiosk.key, kiosk.id)}))
    while True:
        frame = await recv(ws)
        if frame.get("type") == "ready":
            return ws


async def test_manual_override_goes_through_the_kiosk_and_is_audited_live(
    live: LiveServer,  # noqa: F811
    live_world: World,  # noqa: F811
) -> None:
    world, http = live_world, live.http
    home = world.home
    staff = home.people["staff"]
    url = f"/v1/staff/kiosks/{home.kiosk.id}/commands"
    body = {"action": "open", "door_id": home.door_id, "reason": "courier locked out"}

    offline = await http.post(url, json=body, headers=staff.headers)
    assert offline.status_code == 409, offline.text
    assert offline.json()["code"] == "kiosk_offline"

    watcher, _ = await connect(live.ws_url, staff.access_token)
    channel = await _kiosk_channel(live, world)
    try:
        pending = asyncio.create_task(http.post(url, json=body, headers=staff.headers))
        while True:
            command = await recv(channel)
            if command.get("type") == "command":
                break
        assert (command["action"], command["door_id"], command["reason"]) == (
            "open",
            home.door_id,
            "courier locked out",
        )
        await channel.send(
            json.dumps({"type": "ack", "id": command["id"], "ok": True, "detail": "opened"})
        )
        answer = await pending
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["acknowledged"], result["ok"], result["detail"]) == (True, True, "opened")
        assert result["target"] == f"door:{home.door_id}"
        assert result["command_id"] == command["id"]
        # Staff watching live see the audited override.
        while True:
            event = await recv_event(watcher)
            if event["type"] == "override.used":
                break
        assert event["data"]["reason"] == "courier locked out"
        assert event["data"]["door_id"] == home.door_id
    finally:
        await channel.close()
        await watcher.close()
    trail = (
        await http.get(
            f"/v1/staff/properties/{home.property_id}/audit",
            params={"limit": 1000},
            headers=staff.headers,
        )
    ).json()["items"]
    used = by_type(trail, "override.used")
    assert len(used) == 1
    assert used[0]["actor"] == f"user:{staff.user_id}"
    assert used[0]["data"]["ok"] is True


async def test_emergency_access_permission_approval_and_every_use_alerts_staff(
    client: Client, world: World, tmp_path: Path
) -> None:
    home = world.home
    staff = home.people["staff"]
    phone = await phone_of(client, staff)
    request_url = f"/v1/staff/properties/{home.property_id}/emergency-access"
    permission_url = (
        f"/v1/staff/properties/{home.property_id}/members/{staff.user_id}/emergency-permission"
    )
    body = {"device_id": phone.device_id, "reason": "fire alarm, unit 4B"}

    # No permission yet; a staff member without it cannot grant it; an admin can.
    denied = check(await client.post(request_url, json=body, headers=staff.headers), 403)
    assert denied["code"] == "emergency_not_permitted"
    self_grant = check(
        await client.put(permission_url, json={"can_emergency": True}, headers=staff.headers),
        403,
    )
    assert self_grant["code"] == "emergency_not_permitted"
    check(
        await client.put(permission_url, json={"can_emergency": True}, headers=world.admin.headers)
    )
    # Vendors and other properties' staff are kept out.
    check(await client.post(request_url, json=body, headers=home.people["vendor"].headers), 403)
    check(
        await client.post(request_url, json=body, headers=world.other.people["staff"].headers),
        404,
    )

    issued = check(await client.post(request_url, json=body, headers=staff.headers), 201)
    assert issued["state"] == "issued"
    credential = issued["credential"]
    assert credential["target"] == "any"
    assert credential["kiosk_id"] is None

    kiosk = KioskSim.open(home.kiosk, tmp_path / "kiosk")
    await kiosk.sync(client)
    decision = kiosk.redeem(phone, credential["token"], target=f"door:{home.door_id}")
    assert (decision.granted, decision.emergency) == (True, True), decision
    await kiosk.upload(client)
    used = by_type(await events_of(client, home), "emergency.used")
    assert len(used) == 1
    assert used[0]["severity"] == "critical"
    assert used[0]["data"]["kiosk_id"] == home.kiosk.id
    assert used[0]["data"]["holder_user_id"] == staff.user_id
    assert used[0]["data"]["door_id"] == home.door_id
    assert "emergency.used" in types(await my_events(client, staff))
    # The same credential at a second kiosk of the property is another use, another alert.
    lobby = await enroll_kiosk(client, staff, home.property_id, "Lobby")
    lobby_door = check(
        await client.post(
            f"/v1/staff/properties/{home.property_id}/doors",
            json={"name": "Lobby", "kiosk_id": lobby.id, "open_to": "staff"},
            headers=staff.headers,
        ),
        201,
    )["id"]
    second = KioskSim.open(lobby, tmp_path / "lobby")
    await second.sync(client)
    assert second.redeem(phone, credential["token"], target=f"door:{lobby_door}").granted
    await second.upload(client)
    used = by_type(await events_of(client, home), "emergency.used")
    assert [(e["data"]["kiosk_id"], e["severity"]) for e in used] == [
        (home.kiosk.id, "critical"),
        (lobby.id, "critical"),
    ]
    assert "emergency.used" not in types(await my_events(client, home.people["resident"]))

    # With the approval policy on, a second staff member must approve first.
    check(
        await client.patch(
            f"/v1/staff/properties/{home.property_id}",
            json={"policy": {"emergency_requires_approval": True}},
            headers=staff.headers,
        )
    )
    pending = check(await client.post(request_url, json=body, headers=staff.headers), 201)
    assert (pending["state"], pending["credential"]) == ("pending", None)
    collect_url = f"/v1/staff/emergency-access/{pending['id']}/credential"
    early = check(await client.post(collect_url, headers=staff.headers), 409)
    assert early["code"] == "approval_required"
    own = check(
        await client.post(
            f"/v1/staff/emergency-access/{pending['id']}/approve", headers=staff.headers
        ),
        403,
    )
    assert own["code"] == "forbidden"
    check(
        await client.post(
            f"/v1/staff/emergency-access/{pending['id']}/approve",
            headers=world.other.people["staff"].headers,
        ),
        404,
    )
    colleague = await invite(client, staff, home.property_id, "staff")
    approved = check(
        await client.post(
            f"/v1/staff/emergency-access/{pending['id']}/approve", headers=colleague.headers
        )
    )
    assert (approved["state"], approved["approved_by"]) == ("approved", colleague.user_id)
    # Only the requester collects, once.
    check(await client.post(collect_url, headers=colleague.headers), 404)
    collected = check(await client.post(collect_url, headers=staff.headers), 201)
    assert collected["state"] == "issued"
    assert collected["credential"]["token"]
    check(await client.post(collect_url, headers=staff.headers), 409)
