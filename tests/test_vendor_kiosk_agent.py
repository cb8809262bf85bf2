"""A vendor visit with the real kiosk agent: ``concierge-kiosk enroll / sync / verify`` processes
against a live server, the phone's presentation read from stdin, the journal uploaded by sync."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.assertion import public_key_b64
from kiosk.credential import make_presentation
from kiosk.state import KioskState
from tests.live_server import LiveServer, live, live_world  # noqa: F401  (fixtures)
from tests.vendor_support import HOUR, MINUTE, iso, utc_now
from tests.world import World

ROOT = Path(__file__).resolve().parents[1]


async def kiosk_cli(*args: str, stdin: str | None = None) -> tuple[int, dict[str, Any]]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kiosk.cli", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stderr
    return done.returncode, json.loads(lines[-1])


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


async def test_visit_through_the_kiosk_agent(
    live: LiveServer,  # noqa: F811
    live_world: World,  # noqa: F811
    tmp_path: Path,
) -> None:
    http, home = live.http, live_world.home
    staff, vendor, resident = (
        home.people["staff"].headers,
        home.people["vendor"],
        home.people["resident"],
    )
    pid = home.property_id
    state_dir = str(tmp_path / "agent")

    # A new locker bank, enrolled by the agent itself (its key never leaves the state dir).
    created = await ok(
        await http.post(f"/v1/staff/properties/{pid}/kiosks", json={"name": "Back"}, headers=staff),
        201,
    )
    code, enrolled = await kiosk_cli(
        "enroll",
        "--server",
        live.url,
        "--code",
        created["enrollment_code"],
        "--state-dir",
        state_dir,
    )
    assert (code, enrolled["ok"]) == (0, True), enrolled
    kiosk_id = enrolled["kiosk_id"]
    slot = (
        await ok(
            await http.post(
                f"/v1/staff/kiosks/{kiosk_id}/compartments",
                json={"label": "K7", "size": "S", "purpose": "key"},
                headers=staff,
            ),
            201,
        )
    )["id"]
    door = (
        await ok(
            await http.post(
                f"/v1/staff/properties/{pid}/doors",
                json={"name": "Back door", "kiosk_id": kiosk_id, "open_to": "staff"},
                headers=staff,
            ),
            201,
        )
    )["id"]

    # Staff: a key, a visit, the key placed for it.
    key = await ok(
        await http.post(
            f"/v1/staff/properties/{pid}/keys",
            json={"label": "4B", "kind": "unit", "unit_id": home.units["4B"]},
            headers=staff,
        ),
        201,
    )
    now = utc_now()
    visit = await ok(
        await http.post(
            f"/v1/staff/properties/{pid}/work-orders",
            json={
                "unit_id": home.units["4B"],
                "vendor_user_id": vendor.user_id,
                "starts_at": iso(now - MINUTE),
                "ends_at": iso(now + HOUR),
                "door_ids": [door],
                "key_ids": [key["id"]],
            },
            headers=staff,
        ),
        201,
    )
    await ok(
        await http.post(
            f"/v1/staff/keys/{key['id']}/place",
            json={"compartment_id": slot, "work_order_id": visit["id"]},
            headers=staff,
        )
    )

    # The vendor's phone: a device key and the visit's credentials.
    device_key = Ed25519PrivateKey.generate()
    device = await ok(
        await http.post(
            "/v1/devices",
            json={"platform": "ios", "public_key": public_key_b64(device_key)},
            headers=vendor.headers,
        ),
        201,
    )
    issued = (
        await ok(
            await http.post(
                "/v1/credentials",
                json={"device_id": device["id"], "work_order_id": visit["id"]},
                headers=vendor.headers,
            ),
            201,
        )
    )["credentials"]
    by_target = {c["target"]: c["token"] for c in issued}
    assert set(by_target) == {f"door:{door}", f"compartment:{slot}"}

    # At the kiosk: the agent syncs, verifies both presentations, and uploads its journal.
    assert (await kiosk_cli("sync", "--state-dir", state_dir))[0] == 0
    for target in (f"door:{door}", f"compartment:{slot}"):
        presentation = make_presentation(
            by_target[target], device_key, kiosk_id, nonce=secrets.token_urlsafe(16)
        )
        code, decision = await kiosk_cli(
            "verify", "--state-dir", state_dir, "--presentation-file", "-", stdin=presentation
        )
        assert (code, decision["granted"], decision["target"]) == (0, True, target), decision
    code, synced = await kiosk_cli("sync", "--state-dir", state_dir)
    assert code == 0
    assert synced["journal_acked_through"] >= 2
    held = await ok(await http.get(f"/v1/staff/keys/{key['id']}", headers=staff))
    assert (held["state"], held["holder"]["user_id"]) == ("checked_out", vendor.user_id)

    # The vendor drops the key into the free key slot; the kiosk journals it, sync uploads it.
    state = KioskState.open(state_dir)
    try:
        state.journal_append("key.returned", {"key_id": key["id"], "compartment_id": slot})
    finally:
        state.close()
    assert (await kiosk_cli("sync", "--state-dir", state_dir))[0] == 0
    back = await ok(await http.get(f"/v1/staff/keys/{key['id']}", headers=staff))
    assert (back["state"], back["compartment_id"], back["holder"]) == ("in_compartment", slot, None)
    closed = await ok(await http.get(f"/v1/staff/work-orders/{visit['id']}", headers=staff))
    assert closed["state"] == "completed"
    seen = [
        e["type"]
        for e in (await ok(await http.get("/v1/events", headers=resident.headers)))["items"]
    ]
    for expected in (
        "work_order.scheduled",
        "key.checked_out",
        "work_order.started",
        "key.returned",
        "work_order.ended",
    ):
        assert expected in seen, expected
