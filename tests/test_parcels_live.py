"""A served parcel journey: the unit's resident sees each step live over the websocket, the
reminder comes from the policy job scheduled inside the server, and a neighbour sees none of it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from backend.settings import Settings
from tests.conftest import make_settings
from tests.live_server import live_server
from tests.realtime_helpers import connect, recv_event
from tests.world import build_world, check


async def next_parcel_event(ws: Any, timeout: float = 30.0) -> dict[str, Any]:
    while True:
        frame = await recv_event(ws, timeout)
        if frame["type"].startswith("parcel."):
            return frame


async def test_resident_sees_the_journey_live_and_the_server_sends_reminders(
    settings: Settings, tmp_path: Path
) -> None:
    served = make_settings(
        settings.database_url,
        tmp_path / "served",
        background_jobs=True,
        policy_interval_seconds=1.0,
    )
    async with live_server(served) as server:
        http = server.http
        world = await build_world(http, served)  # type: ignore[arg-type]
        site = world.home
        resident, neighbour = site.people["resident"], site.people["neighbour"]
        mine, _ = await connect(server.ws_url, resident.access_token)
        theirs, _ = await connect(server.ws_url, neighbour.access_token)
        try:

            async def kiosk_post(path: str, body: dict[str, Any], status: int = 200) -> Any:
                return check(await http.post(path, json=body, headers=site.kiosk.headers()), status)

            parcel = await kiosk_post(
                "/v1/kiosk/deliveries",
                {"carrier": "UPS", "tracking": "1ZLIVE1", "unit": "4B", "size": "M"},
                201,
            )
            await kiosk_post(f"/v1/kiosk/deliveries/{parcel['parcel_id']}/deposited", {})
            deposited = await next_parcel_event(mine)
            assert deposited["type"] == "parcel.deposited"
            assert deposited["data"]["parcel_id"] == parcel["parcel_id"]
            assert deposited["data"]["compartment_id"] == site.compartments["B1"]

            # Reminders are due at once with this policy; the scheduled job sends one.
            check(
                await http.patch(
                    f"/v1/staff/properties/{site.property_id}",
                    json={"policy": {"reminder_after_days": 0, "quiet_hours": None}},
                    headers=site.people["staff"].headers,
                )
            )
            reminder = await next_parcel_event(mine)
            assert reminder["type"] == "parcel.reminder"
            assert reminder["data"]["parcel_id"] == parcel["parcel_id"]

            pin = check(
                await http.get(f"/v1/parcels/{parcel['parcel_id']}", headers=resident.headers)
            )["pickup_pin"]
            decision = await kiosk_post("/v1/kiosk/pickups", {"unit": "4B", "pin": pin})
            assert decision["granted"] is True
            picked = await next_parcel_event(mine)
            assert picked["type"] == "parcel.picked_up"

            # The neighbour's first parcel event is about their own parcel: none of 4B's came.
            other = await kiosk_post(
                "/v1/kiosk/deliveries",
                {"carrier": "UPS", "tracking": "1ZLIVE2", "unit": "1A", "size": "S"},
                201,
            )
            await kiosk_post(f"/v1/kiosk/deliveries/{other['parcel_id']}/deposited", {})
            first = await next_parcel_event(theirs)
            assert first["type"] == "parcel.deposited"
            assert first["data"]["parcel_id"] == other["parcel_id"]
        finally:
            await asyncio.gather(mine.close(), theirs.close())
