"""WS /v1/realtime against a real server with a real websocket client (the ``websockets`` library).

Auth frame (good, bad, expired, missing, too slow, not first), frame limits, what each role sees
and does not see (live, replayed and via GET /v1/events), resume across a disconnect with events in
between (no gap, no duplicate), the too-old gap, slow consumers, revocation and token expiry.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import msgspec
import pytest
import websockets

from backend.auth import issue_access_token
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.settings import Settings
from tests.live_server import LiveServer, live_server
from tests.realtime_helpers import (
    close_code,
    connect,
    events_until,
    produce,
    recv,
    recv_event,
)
from tests.world import World, build_world, check


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    tuned = msgspec.structs.replace(
        settings,
        ws_auth_timeout_seconds=0.5,
        ws_resume_max_events=20,
        ws_send_queue=8,
        ws_max_message_bytes=4096,
    )
    async with live_server(tuned) as live:
        yield live


@pytest.fixture
async def world(server: LiveServer) -> World:
    return await build_world(server.http, server.settings)  # type: ignore[arg-type]


async def _raw(server: LiveServer) -> websockets.ClientConnection:
    return await websockets.connect(server.ws_url + "/v1/realtime", open_timeout=10)


# -- auth ------------------------------------------------------------------------------------


async def test_good_token_gets_ready_then_events(server: LiveServer, world: World) -> None:
    home = world.home
    ws, ready = await connect(server.ws_url, home.people["resident"].access_token)
    assert ready["user_id"] == home.people["resident"].user_id
    assert ready["limits"]["max_message_bytes"] == 4096
    event_id = await produce(
        server.runtime, home.property_id, "parcel.deposited", unit_id=home.units["4B"]
    )
    frame = await recv_event(ws)
    assert frame == {
        "id": str(event_id),
        "type": "parcel.deposited",
        "occurred_at": frame["occurred_at"],
        "property_id": home.property_id,
        "data": {"unit_id": home.units["4B"]},
    }
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv(ws))["type"] == "pong"
    await ws.close()


@pytest.mark.parametrize(
    ("first_frame", "code"),
    [
        pytest.param({"type": "auth", "token": "not-a-jwt"}, 4001, id="bad-token"),
        pytest.param({"type": "auth"}, 4001, id="missing-token"),
        pytest.param({"type": "auth", "token": ""}, 4001, id="empty-token"),
        pytest.param({"type": "resume", "after": "1"}, 4000, id="not-auth-first"),
        pytest.param({"type": "auth", "token": "x", "after": "-1"}, 4000, id="bad-after"),
        pytest.param("not json", 4000, id="garbage"),
        pytest.param(["auth"], 4000, id="not-an-object"),
    ],
)
async def test_bad_first_frames_close_with_their_code(
    server: LiveServer, first_frame: object, code: int
) -> None:
    ws = await _raw(server)
    await ws.send(first_frame if isinstance(first_frame, str) else json.dumps(first_frame))
    assert await close_code(ws) == code


async def test_expired_token_closes_4002(server: LiveServer, world: World) -> None:
    long_ago = utcnow() - timedelta(hours=2)
    token = issue_access_token(server.runtime, world.home.people["staff"].user_id, "s", long_ago)
    ws = await _raw(server)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    assert await close_code(ws) == 4002


async def test_token_of_another_deployment_is_invalid(server: LiveServer, tmp_path: object) -> None:
    other = Runtime.create(
        msgspec.structs.replace(server.settings, var_dir=f"{tmp_path}/elsewhere")
    )
    try:
        token = issue_access_token(other, "someone", "s", utcnow())
    finally:
        await other.db.dispose()
    ws = await _raw(server)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    assert await close_code(ws) == 4001


async def test_no_auth_frame_in_time_closes_4008(server: LiveServer) -> None:
    ws = await _raw(server)
    assert await close_code(ws) == 4008


async def test_oversized_frame_closes_1009(server: LiveServer, world: World) -> None:
    ws, _ = await connect(server.ws_url, world.home.people["staff"].access_token)
    await ws.send(json.dumps({"type": "ping", "pad": "x" * 10_000}))
    assert await close_code(ws) == 1009


async def test_unknown_frame_after_auth_closes_4000(server: LiveServer, world: World) -> None:
    ws, _ = await connect(server.ws_url, world.home.people["staff"].access_token)
    await ws.send(json.dumps({"type": "subscribe", "channel": "everything"}))
    assert await close_code(ws) == 4000


# -- who sees what ---------------------------------------------------------------------------

VIEWERS = {
    "home staff": ("home", "staff"),
    "resident 4B": ("home", "resident"),
    "resident 1A": ("home", "neighbour"),
    "vendor": ("home", "vendor"),
    "courier": ("home", "courier"),
    "other staff": ("other", "staff"),
    "other resident": ("other", "resident"),
}

EXPECTED = {
    "home staff": {"parcel", "credential", "work_order", "alarm"},
    "resident 4B": {"parcel", "credential"},
    "resident 1A": {"work_order"},
    "vendor": {"work_order"},
    "courier": set(),
    "other staff": {"other_parcel"},
    "other resident": {"other_parcel"},
    "admin": {"parcel", "credential", "work_order", "alarm", "other_parcel"},
}


async def test_each_role_sees_exactly_its_events(server: LiveServer, world: World) -> None:
    """Live, replayed and listed through GET /v1/events: the same rule, attackers see nothing."""
    sites = {"home": world.home, "other": world.other}
    people = {name: sites[site].people[role] for name, (site, role) in VIEWERS.items()}
    people["admin"] = world.admin
    sockets = {}
    for name, person in people.items():
        sockets[name], ready = await connect(server.ws_url, person.access_token)
    baseline = int(ready["last_event_id"])

    home, other = world.home, world.other
    rt = server.runtime
    labels = {
        await produce(rt, home.property_id, "parcel.deposited", unit_id=home.units["4B"]): "parcel",
        await produce(
            rt, home.property_id, "credential.redeemed", user_id=home.people["resident"].user_id
        ): "credential",
        await produce(
            rt,
            home.property_id,
            "work_order.started",
            user_id=home.people["vendor"].user_id,
            unit_id=home.units["1A"],
        ): "work_order",
        await produce(rt, home.property_id, "door.forced"): "alarm",
        await produce(
            rt, other.property_id, "parcel.deposited", unit_id=other.units["4B"]
        ): "other_parcel",
    }
    # A sentinel per viewer, visible to them: once it arrives, everything before it has.
    sentinels = {}
    for name, person in people.items():
        site = sites[VIEWERS[name][0]] if name != "admin" else home
        sentinels[name] = await produce(
            rt, site.property_id, "test.sentinel", user_id=person.user_id
        )

    for name, ws in sockets.items():
        frames = await events_until(ws, sentinels[name])
        assert frames[-1]["id"] == str(sentinels[name]), name
        live_seen = {labels[int(f["id"])] for f in frames if int(f["id"]) in labels}
        assert live_seen == EXPECTED[name], name
        ids = [int(f["id"]) for f in frames]
        assert ids == sorted(set(ids)), name
        await ws.close()

    for name, person in people.items():
        listed = check(
            await server.http.get(
                "/v1/events", params={"after": str(baseline), "limit": 200}, headers=person.headers
            )
        )
        listed_seen = {labels[int(i["id"])] for i in listed["items"] if int(i["id"]) in labels}
        assert listed_seen == EXPECTED[name], name

        ws, _ = await connect(server.ws_url, person.access_token, after=baseline)
        replayed = []
        while (frame := await recv(ws))["type"] != "replayed":
            replayed.append(frame)
        assert {labels[int(f["id"])] for f in replayed if int(f["id"]) in labels} == EXPECTED[
            name
        ], name
        await ws.close()


async def test_events_list_pages_with_next_cursor(server: LiveServer, world: World) -> None:
    home = world.home
    staff = home.people["staff"]
    start = await produce(server.runtime, home.property_id, "test.first")
    ids = [start] + [await produce(server.runtime, home.property_id) for _ in range(4)]
    seen: list[int] = []
    params: dict[str, str | int] = {"after": str(start - 1), "limit": 2}
    while True:
        page = check(await server.http.get("/v1/events", params=params, headers=staff.headers))
        seen += [int(item["id"]) for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params = {"cursor": page["next_cursor"], "limit": 2}
    assert seen[: len(ids)] == ids
    bad = await server.http.get("/v1/events", params={"after": "abc"}, headers=staff.headers)
    assert check(bad, 400)["code"] == "validation_error"
    assert (await server.http.get("/v1/events")).status_code == 401


# -- resume ----------------------------------------------------------------------------------


async def test_resume_after_disconnect_has_no_gap_and_no_duplicate(
    server: LiveServer, world: World
) -> None:
    home = world.home
    resident = home.people["resident"]
    rt, unit = server.runtime, home.units["4B"]
    ws, _ = await connect(server.ws_url, resident.access_token)
    first = await produce(rt, home.property_id, "parcel.deposited", unit_id=unit)
    assert int((await recv_event(ws))["id"]) == first
    await ws.close()

    missed = [
        await produce(rt, home.property_id, "parcel.reminder", unit_id=unit) for _ in range(3)
    ]
    await produce(rt, home.property_id, "parcel.deposited", unit_id=home.units["1A"])  # not theirs

    # Reconnect while events keep being committed: the seam between replay and live. Fewer
    # than this module's send queue (8): live events queue behind the replay, and on a busy
    # machine a slow replay would otherwise close the socket as a slow consumer (4009).
    async def keep_producing() -> list[int]:
        return [
            await produce(rt, home.property_id, "parcel.picked_up", unit_id=unit) for _ in range(6)
        ]

    producer = asyncio.create_task(keep_producing())
    ws, _ = await connect(server.ws_url, resident.access_token, after=first)
    during = await producer
    last = await produce(rt, home.property_id, "test.sentinel", unit_id=unit)
    frames: list[dict[str, Any]] = []
    # Read up to the sentinel and the end-of-replay marker: on a slow machine the replay may
    # still be running when the sentinel commits, and then carries it before its marker.
    while not (
        any(f.get("id") == str(last) for f in frames)
        and any(f.get("type") == "replayed" for f in frames)
    ):
        frame = await recv(ws)
        if frame.get("type") != "ping":
            frames.append(frame)
    ids = [int(f["id"]) for f in frames if "id" in f]
    assert ids == [*missed, *during, last]  # every one, in order, once
    assert sum(1 for f in frames if f.get("type") == "replayed") == 1

    # A resume frame on an open socket replays again from the given id.
    await ws.send(json.dumps({"type": "resume", "after": str(missed[-1])}))
    again = []
    while (frame := await recv(ws)).get("type") != "replayed":
        again.append(int(frame["id"]))
    assert again == [*during, last]
    assert frame["through"] == str(last)
    await ws.close()


async def test_too_old_gap_says_refetch(server: LiveServer, world: World) -> None:
    home = world.home
    staff = home.people["staff"]
    start = await produce(server.runtime, home.property_id)
    for _ in range(server.settings.ws_resume_max_events + 1):
        await produce(server.runtime, home.property_id)
    ws, _ = await connect(server.ws_url, staff.access_token, after=start)
    gap = await recv(ws)
    assert gap["type"] == "gap"
    assert gap["after"] == str(start)
    assert "/v1/events" in gap["detail"]
    live = await produce(server.runtime, home.property_id, "test.live")
    assert int((await recv_event(ws))["id"]) == live  # live continues after the gap frame
    await ws.close()


# -- slow consumers, revocation, expiry -----------------------------------------------------


async def _ids_until_closed(ws: websockets.ClientConnection) -> tuple[list[int], int | None]:
    ids = []
    try:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if "id" in frame:
                ids.append(int(frame["id"]))
    except websockets.ConnectionClosed as closed:
        return ids, closed.rcvd.code if closed.rcvd else None


async def test_slow_consumer_is_closed_4009_and_resumes_without_loss(
    server: LiveServer, world: World
) -> None:
    home = world.home
    staff = home.people["staff"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    # max_queue=1: the client library stops reading the socket once one frame is buffered.
    ws, ready = await connect(server.ws_url, staff.access_token, sock=sock, max_queue=1)
    hub = server.runtime.extensions["realtime"]
    before = hub.stats["slow_consumers"]
    produced = []
    blob = "x" * 32_000
    while hub.stats["slow_consumers"] == before:
        produced.append(await produce(server.runtime, home.property_id, payload={"blob": blob}))
        assert len(produced) < 2000, "the server never found this consumer slow"
    received, code = await _ids_until_closed(ws)
    assert code == 4009
    assert received == produced[: len(received)]
    # Resume from the last event received: the rest arrives, once each.
    ws, _ = await connect(
        server.ws_url,
        staff.access_token,
        after=received[-1] if received else ready["last_event_id"],
    )
    rest = []
    while (frame := await recv(ws)).get("type") != "replayed":
        rest.append(int(frame["id"]))
    assert received + rest == produced
    await ws.close()


async def test_removed_member_socket_closes_4003(server: LiveServer, world: World) -> None:
    home = world.home
    resident, staff = home.people["resident"], home.people["staff"]
    ws, _ = await connect(server.ws_url, resident.access_token)
    response = await server.http.delete(
        f"/v1/staff/properties/{home.property_id}/members/{resident.user_id}",
        headers=staff.headers,
    )
    assert response.status_code in (200, 204), response.text
    assert await close_code(ws) == 4003
    # And the token no longer opens a socket that could see anything.
    ws = await _raw(server)
    await ws.send(json.dumps({"type": "auth", "token": resident.access_token}))
    assert await close_code(ws) in (4001, 4003)


async def test_socket_closes_4002_when_its_token_expires_unless_refreshed(
    server: LiveServer, world: World
) -> None:
    short = Runtime.create(msgspec.structs.replace(server.settings, access_token_ttl_seconds=2))
    try:
        user_id = world.home.people["staff"].user_id
        expiring = issue_access_token(short, user_id, "s", utcnow())
        refreshed_first = issue_access_token(short, user_id, "s", utcnow())
    finally:
        await short.db.dispose()
    ws, ready = await connect(server.ws_url, expiring)
    assert ready["expires_at"]
    assert await close_code(ws) == 4002

    ws2, _ = await connect(server.ws_url, refreshed_first)
    fresh = issue_access_token(server.runtime, user_id, "s", utcnow())
    await ws2.send(json.dumps({"type": "auth", "token": fresh}))
    accepted = await recv(ws2)
    assert accepted["type"] == "token_accepted"
    await asyncio.sleep(3)  # past the first token's expiry
    event_id = await produce(server.runtime, world.home.property_id)
    assert int((await recv_event(ws2))["id"]) == event_id  # still open
    other_user = issue_access_token(
        server.runtime, world.home.people["vendor"].user_id, "s", utcnow()
    )
    await ws2.send(json.dumps({"type": "auth", "token": other_user}))
    assert await close_code(ws2) == 4001


async def test_pings_idle_timeout_and_max_lifetime(server: LiveServer, world: World) -> None:
    token = world.home.people["staff"].access_token
    tuned = msgspec.structs.replace(
        server.settings, ws_ping_interval_seconds=0.3, ws_idle_timeout_seconds=1.5
    )
    async with live_server(tuned) as other:
        ws, ready = await connect(other.ws_url, token)
        assert ready["limits"]["idle_timeout_seconds"] == 1.5
        for _ in range(8):  # answering pings keeps it open well past the idle timeout
            assert (await recv(ws))["type"] == "ping"
            await ws.send(json.dumps({"type": "pong"}))
        assert await close_code(ws) == 4010  # stops answering: idle
    short = msgspec.structs.replace(server.settings, ws_max_lifetime_seconds=1.0)
    async with live_server(short) as other:
        ws, _ = await connect(other.ws_url, token)
        assert await close_code(ws) == 4011


async def test_periodic_recheck_closes_a_socket_whose_access_ended_silently(
    server: LiveServer, world: World
) -> None:
    """Access removed without any event (directly in the database): the periodic re-check."""
    from sqlalchemy import delete

    from backend.models import Membership

    vendor = world.home.people["vendor"]
    tuned = msgspec.structs.replace(server.settings, ws_recheck_seconds=0.5)
    async with live_server(tuned) as other:
        ws, _ = await connect(other.ws_url, vendor.access_token)
        async with other.runtime.db.session() as session:
            await session.exec(delete(Membership).where(Membership.user_id == vendor.user_id))  # type: ignore[call-overload]
        assert await close_code(ws) == 4003


async def test_fan_out_fast_path_frames_every_length_correctly(
    server: LiveServer, world: World
) -> None:
    """Events are written as shared frame bytes straight to the transport (realtime/frames.py):
    the three websocket length encodings (7-bit, 16-bit, 64-bit) arrive intact, in order."""
    home = world.home
    ws, _ = await connect(server.ws_url, home.people["staff"].access_token)
    hub = server.runtime.extensions["realtime"]
    before = hub.stats["direct_writes"]
    blobs = ["", "é" * 100, "x" * 70_000]
    produced = [
        await produce(server.runtime, home.property_id, payload={"blob": blob}) for blob in blobs
    ]
    for event_id, blob in zip(produced, blobs, strict=True):
        frame = await recv_event(ws)
        assert frame["id"] == str(event_id)
        assert frame["data"] == {"blob": blob}
    assert hub.stats["direct_writes"] - before == len(blobs)
    await ws.close()
