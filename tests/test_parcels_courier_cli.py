"""``concierge-kiosk deliver`` and ``pickup`` as subprocesses against a live server, online and
offline (decided from the last sync, journaled, reconciled by the server on upload)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.live_server import LiveServer, live, live_world  # noqa: F401  (fixtures)
from tests.world import World, check

CLOSED_PORT = "http://127.0.0.1:9"


async def kiosk_cli(*args: str) -> tuple[int, dict[str, Any]]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kiosk.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}


def set_server(state_dir: Path, url: str) -> None:
    path = state_dir / "config.json"
    config = json.loads(path.read_text())
    config["server_url"] = url
    path.write_text(json.dumps(config))


async def test_courier_cli_online_and_offline(
    live: LiveServer,  # noqa: F811  (fixture imported above)
    live_world: World,  # noqa: F811
    tmp_path: Path,
) -> None:
    http, site = live.http, live_world.home
    staff, resident = site.people["staff"], site.people["resident"]
    created = check(
        await http.post(
            f"/v1/staff/properties/{site.property_id}/kiosks",
            json={"name": "Lobby lockers"},
            headers=staff.headers,
        ),
        201,
    )
    kiosk_id = created["id"]
    labels = {}
    for label, size in (("S1", "S"), ("M1", "M"), ("M2", "M"), ("L1", "L")):
        labels[label] = check(
            await http.post(
                f"/v1/staff/kiosks/{kiosk_id}/compartments",
                json={"label": label, "size": size, "purpose": "parcel"},
                headers=staff.headers,
            ),
            201,
        )["id"]
    state_dir = tmp_path / "kiosk"
    code, out = await kiosk_cli(
        "enroll",
        "--server",
        live.url,
        "--code",
        created["enrollment_code"],
        "--state-dir",
        str(state_dir),
    )
    assert code == 0, out
    assert out["synced"] is True
    sd = ("--state-dir", str(state_dir))

    # Online: the smallest free compartment that fits, deposited once the door closed.
    code, out = await kiosk_cli(
        "deliver", *sd, "--unit", "4B", "--carrier", "UPS", "--tracking", "1ZCLI0001", "--size", "M"
    )
    assert code == 0, out
    assert out["mode"] == "online"
    assert out["state"] == "deposited"
    assert out["compartment"]["label"] == "M1"
    online_id = out["parcel_id"]
    pin = check(await http.get(f"/v1/parcels/{online_id}", headers=resident.headers))["pickup_pin"]
    assert pin is not None
    # The same scan again is the same parcel.
    code, again = await kiosk_cli(
        "deliver", *sd, "--unit", "4B", "--carrier", "UPS", "--tracking", "1ZCLI0001", "--size", "M"
    )
    assert code == 0
    assert again["parcel_id"] == online_id
    # No XL compartment: the courier is told.
    code, out = await kiosk_cli(
        "deliver",
        *sd,
        "--unit",
        "4B",
        "--carrier",
        "UPS",
        "--tracking",
        "1ZCLI0002",
        "--size",
        "XL",
    )
    assert code == 1
    assert out["reason"] == "no_compartment_fits"
    # Unknown unit.
    code, out = await kiosk_cli(
        "deliver",
        *sd,
        "--unit",
        "77Q",
        "--carrier",
        "UPS",
        "--tracking",
        "1ZCLI0003",
        "--size",
        "S",
    )
    assert code == 1
    assert out["reason"] == "unknown_unit"

    # Online PIN pickup.
    wrong = "000000" if pin != "000000" else "111111"
    code, out = await kiosk_cli("pickup", *sd, "--unit", "4B", "--pin", wrong)
    assert (code, out["granted"], out["reason"]) == (1, False, "wrong_pin")
    code, out = await kiosk_cli("pickup", *sd, "--unit", "4B", "--pin", pin)
    assert (code, out["granted"], out["reason"]) == (0, True, "pin_ok")
    assert [c["label"] for c in out["compartments"]] == ["M1"]
    doors = (state_dir / "doors.jsonl").read_text()
    assert labels["M1"] in doors

    # Offline intake: from the synced free list, two parcels, two compartments.
    code, out = await kiosk_cli("sync", *sd)
    assert code == 0, out
    set_server(state_dir, CLOSED_PORT)
    code, first = await kiosk_cli(
        "deliver", *sd, "--unit", "4B", "--carrier", "DHL", "--tracking", "JDOFF1", "--size", "S"
    )
    assert code == 0, first
    assert first["mode"] == "offline"
    assert first["compartment"]["label"] == "S1"
    code, second = await kiosk_cli(
        "deliver", *sd, "--unit", "1A", "--carrier", "DHL", "--tracking", "JDOFF2", "--size", "S"
    )
    assert code == 0
    assert second["compartment"]["label"] == "M1"
    # The server knows nothing yet.
    listed = check(
        await http.get(
            f"/v1/staff/properties/{site.property_id}/parcels?state=deposited",
            headers=staff.headers,
        )
    )
    assert listed["items"] == []

    # Back online: the journal upload reconciles; the residents are told then.
    set_server(state_dir, live.url)
    code, out = await kiosk_cli("sync", *sd)
    assert code == 0, out
    mine = check(await http.get("/v1/parcels?state=deposited", headers=resident.headers))["items"]
    assert [(p["tracking"], p["compartment"]["label"], p["offline"]) for p in mine] == [
        ("JDOFF1", "S1", True)
    ]
    offline_pin = mine[0]["pickup_pin"]
    assert offline_pin is not None

    # Offline PIN pickup from the synced hashes, with the attempt budget enforced locally.
    code, out = await kiosk_cli("sync", *sd)  # now the hashes include the reconciled parcel
    assert code == 0
    set_server(state_dir, CLOSED_PORT)
    wrong = "000000" if offline_pin != "000000" else "111111"
    code, out = await kiosk_cli("pickup", *sd, "--unit", "4B", "--pin", wrong)
    assert (code, out["granted"], out["reason"], out["mode"]) == (1, False, "wrong_pin", "offline")
    code, out = await kiosk_cli("pickup", *sd, "--unit", "4B", "--pin", offline_pin)
    assert (code, out["granted"], out["mode"]) == (0, True, "offline")
    assert [c["label"] for c in out["compartments"]] == ["S1"]
    # A PIN opens once, offline too.
    code, out = await kiosk_cli("pickup", *sd, "--unit", "4B", "--pin", offline_pin)
    assert (code, out["granted"]) == (1, False)
    # 1A: five wrong PINs (the default budget), then even the right one is refused.
    pin_1a = check(
        await http.get(
            f"/v1/staff/properties/{site.property_id}/parcels?unit=1A", headers=staff.headers
        )
    )["items"][0]["pickup_pin"]
    bad = [f"{n:06d}" for n in range(10) if f"{n:06d}" != pin_1a][:5]
    for candidate in bad:
        code, out = await kiosk_cli("pickup", *sd, "--unit", "1A", "--pin", candidate)
        assert out["reason"] == "wrong_pin"
    code, out = await kiosk_cli("pickup", *sd, "--unit", "1A", "--pin", pin_1a)
    assert (code, out["granted"], out["reason"]) == (1, False, "locked_out")
    assert out["retry_after_seconds"] > 0

    # Upload: the server records the offline pickup and every failure.
    set_server(state_dir, live.url)
    code, out = await kiosk_cli("sync", *sd)
    assert code == 0
    view = check(await http.get(f"/v1/parcels/{mine[0]['id']}", headers=resident.headers))
    assert view["state"] == "picked_up"
    report = check(
        await http.get(
            f"/v1/staff/properties/{site.property_id}/reports/weekly", headers=staff.headers
        )
    )
    # online: 1 wrong; offline: 1 wrong for 4B, 1 reuse, 5 wrong for 1A, 1 locked out
    assert report["failed_pin_attempts"] == 9
