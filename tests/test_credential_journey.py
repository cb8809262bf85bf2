"""The whole path on a real server: credential -> QR (or BLE) -> offline kiosk -> journal.

A resident registers a device and gets a one-time credential for their parcel's compartment;
the phone side renders the presentation as a QR PNG; with the server stopped, the kiosk
(``concierge-kiosk verify`` as a subprocess over its state directory) decodes and verifies it,
opens the compartment once and refuses the second scan; after reconnecting, ``concierge-kiosk
sync`` uploads the journal and the server marks the credential redeemed and records the event.
The same over the BLE loopback transport for a door credential.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.settings import Settings
from kiosk import ble, qr
from kiosk.agent import Agent, sync
from kiosk.client import ServerClient
from kiosk.credential import make_presentation, public_key_b64url
from kiosk.state import KioskConfig, KioskState
from tests.live_server import LiveServer, live_server
from tests.world import Person, World, build_world, check


def kiosk_cli(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "kiosk.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


async def register_device(server: LiveServer, person: Person) -> tuple[str, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    body = check(
        await server.http.post(
            "/v1/devices",
            json={"platform": "android", "public_key": public_key_b64url(key)},
            headers=person.headers,
        ),
        201,
    )
    return str(body["id"]), key


async def events_of(server: LiveServer, person: Person) -> list[dict[str, Any]]:
    body = check(await server.http.get("/v1/events", headers=person.headers))
    items: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
    return items


def phone_iat(answer: dict[str, Any], received_at: float) -> int:
    """The phone's kb-jwt iat: its clock corrected by the server's offset."""
    return int(time.time() + (answer["server_time"] - received_at))


async def test_parcel_pickup_over_qr_with_the_kiosk_offline(
    settings: Settings, tmp_path: Path
) -> None:
    async with live_server(settings) as server:
        world: World = await build_world(server.http, settings)  # type: ignore[arg-type]
        home = world.home
        resident = home.people["resident"]
        # The kiosk computer: its state directory holds the enrolled kiosk's key.
        state = KioskState.create(
            tmp_path / "kiosk",
            KioskConfig(server.url, home.kiosk.id, home.property_id),
            home.kiosk.key,
        )
        # A courier delivers a parcel for 4B at the kiosk; the door closes on it.
        client = ServerClient(state, async_http=server.http)
        delivery = await client.arequest(
            "POST",
            "/v1/kiosk/deliveries",
            json={"carrier": "UPS", "tracking": "1Z999", "unit": "4B", "size": "S"},
        )
        parcel_id = delivery["parcel_id"]
        compartment = delivery["compartment"]["id"]
        await client.arequest("POST", f"/v1/kiosk/deliveries/{parcel_id}/deposited", json={})
        await sync(state, client)  # the kiosk is online once, then the network goes away

        device_id, device_key = await register_device(server, resident)
        answer = check(
            await server.http.post(
                "/v1/credentials",
                json={"device_id": device_id, "parcel_id": parcel_id},
                headers=resident.headers,
            ),
            201,
        )
        received_at = time.time()
        [issued] = answer["credentials"]
        assert issued["kiosk_id"] == home.kiosk.id
        assert issued["target"] == f"compartment:{compartment}"
    # ---- the server is gone: the kiosk decides alone -------------------------------------
    presentation = make_presentation(
        issued["token"], device_key, home.kiosk.id, iat=phone_iat(answer, received_at)
    )
    image = tmp_path / "phone-screen.png"
    image.write_bytes(qr.render_png(presentation))
    state_dir = str(tmp_path / "kiosk")
    code, first = kiosk_cli("verify", "--state-dir", state_dir, "--qr", str(image))
    assert (code, first["granted"], first["target"]) == (0, True, f"compartment:{compartment}")
    code, second = kiosk_cli("verify", "--state-dir", state_dir, "--qr", str(image))
    assert (code, second["granted"], second["reason"]) == (1, False, "already_used")
    # A forwarded screenshot on another phone (proof by another device key) opens nothing.
    forwarded = make_presentation(
        issued["token"],
        Ed25519PrivateKey.generate(),
        home.kiosk.id,
        iat=phone_iat(answer, received_at),
    )
    code, third = kiosk_cli("verify", "--state-dir", state_dir, "--presentation", forwarded)
    assert (code, third["reason"]) == (1, "bad_proof")
    opened = KioskState.open(state_dir).doors.logged()  # type: ignore[attr-defined]
    assert [o.target for o in opened] == [f"compartment:{compartment}"]

    # ---- back online (a restarted server on the same database) ---------------------------
    async with live_server(settings) as server:
        state = KioskState.create(
            state_dir,
            KioskConfig(server.url, home.kiosk.id, home.property_id),
            home.kiosk.key,
        )
        pending = state.store.pending_entries()
        assert [e["data"]["reason"] for e in pending] == ["granted", "already_used", "bad_proof"]
        code, synced = await asyncio.to_thread(kiosk_cli, "sync", "--state-dir", state_dir)
        assert code == 0, synced
        assert synced["journal_acked_through"] == pending[-1]["seq"]
        assert KioskState.open(state_dir).store.pending_entries() == []
        events = await events_of(server, resident)
        redeemed = [e for e in events if e["type"] == "credential.redeemed"]
        assert [e["data"].get("credential_id") for e in redeemed] == [issued["id"]]
        assert not [e for e in events if e["type"] == "credential.double_spent"]


async def test_door_unlock_over_ble_loopback_then_journal_upload(
    settings: Settings, tmp_path: Path
) -> None:
    async with live_server(settings) as server:
        world: World = await build_world(server.http, settings)  # type: ignore[arg-type]
        home = world.home
        resident = home.people["resident"]
        state = KioskState.create(
            tmp_path / "kiosk",
            KioskConfig(server.url, home.kiosk.id, home.property_id),
            home.kiosk.key,
        )
        agent = Agent(state, ServerClient(state, async_http=server.http))
        await agent.sync_and_upload()
        device_id, device_key = await register_device(server, resident)
        answer = check(
            await server.http.post(
                "/v1/credentials",
                json={"device_id": device_id, "door_id": home.door_id},
                headers=resident.headers,
            ),
            201,
        )
        received_at = time.time()
        [issued] = answer["credentials"]
        kiosk_public_key = answer["kiosk_public_key"] or issued["kiosk_public_key"]
        assert kiosk_public_key == public_key_b64url(home.kiosk.key)

        transport = ble.LoopbackTransport(
            ble.KioskBleServer(
                home.kiosk.id,
                state.key,
                lambda p, n: state.present(p, channel="ble", nonce=n),
                clock=state.now,
            )
        )
        taps: list[str] = []

        def tap(kiosk_id: str) -> bool:
            taps.append(kiosk_id)
            return True

        kwargs: dict[str, Any] = {
            "credential": issued["token"],
            "device_key": device_key,
            "kiosk_id": issued["kiosk_id"],
            "kiosk_public_key": kiosk_public_key,
            "confirm": tap,
            "iat": phone_iat(answer, received_at),
        }
        result = await ble.unlock_over_ble(transport.connect(mtu=185), **kwargs)
        assert result == {"granted": True, "reason": "granted", "target": f"door:{home.door_id}"}
        again = await ble.unlock_over_ble(transport.connect(mtu=185), **kwargs)
        assert again["reason"] == "already_used"
        assert taps == [home.kiosk.id, home.kiosk.id]
        assert [o.target for o in state.doors.opens] == [f"door:{home.door_id}"]  # type: ignore[attr-defined]

        await agent.sync_and_upload()
        assert state.store.pending_entries() == []
        events = await events_of(server, resident)
        redeemed = [e for e in events if e["type"] == "credential.redeemed"]
        assert [e["data"].get("credential_id") for e in redeemed] == [issued["id"]]
