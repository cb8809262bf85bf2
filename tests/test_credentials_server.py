"""Credential issuance, signing keys and JWKS, through the public API and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backend.app import create_app
from backend.crypto import b64url, load_kek, unseal
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services import signing_keys
from backend.settings import Settings
from kiosk.credential import CRED_TYP
from tests.app_client import AppClient
from tests.conftest import make_settings
from tests.credentials_helpers import (
    door_credentials,
    get_jwks,
    header_of,
    public_b64,
    register_device,
    verify,
)
from tests.credentials_helpers import sync as kiosk_sync
from tests.world import World, build_world, check

ROOT = Path(__file__).resolve().parent.parent
JWK_FIELDS = {"kty", "crv", "x", "kid", "alg", "use", "status", "purpose"}


async def test_jwks_is_public_and_has_active_and_next_keys(client: AppClient) -> None:
    response = await client.get("/.well-known/jwks.json")
    body = check(response)
    assert "max-age" in response.headers.get("cache-control", "")
    statuses = {(k["purpose"], k["status"]) for k in body["keys"]}
    assert statuses == {
        ("credential", "active"),
        ("credential", "next"),
        ("emergency", "active"),
        ("emergency", "next"),
    }
    for key in body["keys"]:
        assert set(key) == JWK_FIELDS
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == (
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
        )
    # Stable across requests (and processes): keys live in the database.
    assert check(await client.get("/.well-known/jwks.json")) == body


async def test_resident_gets_a_door_credential_bound_to_device_and_kiosk(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    resident = world.home.people["resident"]
    device_id, device_key = await register_device(client, resident)
    jwks = await get_jwks(client)
    body = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    (item,) = body["credentials"]
    assert item["kiosk_id"] == world.home.kiosk.id
    assert item["target"] == f"door:{world.home.door_id}"
    assert body["kiosk_public_key"] == public_b64(world.home.kiosk.key)
    assert abs(body["server_time"] - time.time()) < 60
    header = header_of(item["token"])
    assert header == {"alg": "EdDSA", "kid": header["kid"], "typ": CRED_TYP}
    active = [
        k["kid"] for k in jwks["keys"] if k["purpose"] == "credential" and k["status"] == "active"
    ]
    assert header["kid"] in active
    claims = verify(item["token"], jwks, world.home.kiosk.id)
    assert set(claims) == {"iss", "sub", "aud", "jti", "iat", "nbf", "exp", "tgt", "role", "cnf"}
    assert claims["sub"] == resident.user_id
    assert claims["jti"] == item["id"]
    assert claims["tgt"] == f"door:{world.home.door_id}"
    assert claims["role"] == "resident"
    assert claims["cnf"] == {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": public_b64(device_key)}}
    assert claims["exp"] - claims["iat"] == 300  # on-site validity (default setting)
    # Two requests give two different one-time credentials.
    again = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    assert again["credentials"][0]["id"] != item["id"]


async def _units_door(client: AppClient, world: World, unit: str) -> str:
    staff = world.home.people["staff"]
    door = check(
        await client.post(
            f"/v1/staff/properties/{world.home.property_id}/doors",
            json={
                "name": "Garage",
                "kiosk_id": world.home.kiosk.id,
                "open_to": "units",
                "unit_ids": [world.home.units[unit]],
            },
            headers=staff.headers,
        ),
        201,
    )
    return str(door["id"])


async def test_units_door_and_staff_door(world: World, client: AppClient) -> None:
    garage = await _units_door(client, world, "4B")
    resident, neighbour = world.home.people["resident"], world.home.people["neighbour"]
    device_id, _ = await register_device(client, resident)
    check(await door_credentials(client, resident, device_id, garage), 201)
    neighbour_device, _ = await register_device(client, neighbour)
    denied = await door_credentials(client, neighbour, neighbour_device, garage)
    assert check(denied, 404)["code"] == "not_found"
    # Staff open every door of their property, with the staff role.
    staff = world.home.people["staff"]
    staff_device, _ = await register_device(client, staff)
    body = check(await door_credentials(client, staff, staff_device, garage), 201)
    jwks = await get_jwks(client)
    assert verify(body["credentials"][0]["token"], jwks, world.home.kiosk.id)["role"] == "staff"


@pytest.mark.parametrize(
    ("intruder", "status", "code"),
    [
        ("vendor", 404, "not_found"),  # vendors open doors through a work order only
        ("other_resident", 404, "not_found"),  # another property's resident
        ("courier", 403, "forbidden"),  # not a phone-app audience
    ],
)
async def test_door_refused_to_intruders(
    world: World,
    client: AppClient,
    intruder: str,
    status: int,
    code: str,
) -> None:
    person = {
        "vendor": world.home.people["vendor"],
        "other_resident": world.other.people["resident"],
        "courier": world.home.people["courier"],
    }[intruder]
    device_id, _ = await register_device(client, person)
    response = await door_credentials(client, person, device_id, world.home.door_id)
    assert check(response, status)["code"] == code


async def test_device_of_another_user_or_removed_device_is_not_found(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    resident, neighbour = world.home.people["resident"], world.home.people["neighbour"]
    neighbours_device, _ = await register_device(client, neighbour)
    response = await door_credentials(client, resident, neighbours_device, world.home.door_id)
    assert check(response, 404)["code"] == "not_found"
    own, _ = await register_device(client, resident)
    check(await client.delete(f"/v1/devices/{own}", headers=resident.headers), 204)
    response = await door_credentials(client, resident, own, world.home.door_id)
    assert check(response, 404)["code"] == "not_found"


async def test_request_must_name_exactly_one_thing(world: World, client: AppClient) -> None:
    resident = world.home.people["resident"]
    device_id, _ = await register_device(client, resident)
    for body in (
        {"device_id": device_id},
        {"device_id": device_id, "door_id": world.home.door_id, "parcel_id": "x" * 16},
        {"device_id": device_id, "door_id": world.home.door_id, "surprise": 1},
    ):
        response = await client.post("/v1/credentials", json=body, headers=resident.headers)
        assert check(response, 400)["code"] == "validation_error"
    unauthenticated = await client.post(
        "/v1/credentials", json={"device_id": device_id, "door_id": world.home.door_id}
    )
    assert unauthenticated.status_code == 401


async def test_offline_batch_is_bounded_and_longer_lived(
    world: World, client: AppClient, settings: Settings
) -> None:  # type: ignore[type-arg]
    resident = world.home.people["resident"]
    device_id, _ = await register_device(client, resident)
    body = check(
        await door_credentials(client, resident, device_id, world.home.door_id, count=3), 201
    )
    assert len(body["credentials"]) == 3
    assert len({c["id"] for c in body["credentials"]}) == 3
    jwks = await get_jwks(client)
    for item in body["credentials"]:
        claims = verify(item["token"], jwks, world.home.kiosk.id)
        assert claims["exp"] - claims["iat"] == settings.offline_credential_ttl_seconds
    too_many = settings.max_offline_credentials + 1
    response = await door_credentials(
        client, resident, device_id, world.home.door_id, count=too_many
    )
    assert check(response, 400)["code"] == "validation_error"
    response = await door_credentials(client, resident, device_id, world.home.door_id, count=0)
    assert check(response, 400)["code"] == "validation_error"
    maximum = settings.max_offline_credentials
    body = check(
        await door_credentials(client, resident, device_id, world.home.door_id, count=maximum), 201
    )
    assert len(body["credentials"]) == maximum


async def _private_keys_async(settings: Settings) -> tuple[list[str], list[str]]:
    from sqlmodel import select

    from backend.models import SigningKey

    runtime = Runtime.create(settings)
    try:
        async with runtime.db.session() as session:
            rows = (await session.exec(select(SigningKey))).all()
            sealed = [k.private_key_sealed for k in rows if k.private_key_sealed]
            raw = [
                b64url(unseal(runtime.kek, k.private_key_sealed, context=f"signing-key:{k.kid}"))
                for k in rows
                if k.private_key_sealed
            ]
            return raw, sealed
    finally:
        await runtime.db.dispose()


async def test_private_keys_never_leave_the_server(
    world: World, client: AppClient, settings: Settings
) -> None:  # type: ignore[type-arg]
    resident = world.home.people["resident"]
    device_id, _ = await register_device(client, resident)
    texts = [
        (await client.get("/.well-known/jwks.json")).text,
        (await door_credentials(client, resident, device_id, world.home.door_id)).text,
        (await client.get("/v1/kiosk/sync", headers=world.home.kiosk.headers())).text,
        (await client.get("/schema/openapi.json")).text,
    ]
    raw, sealed = await _private_keys_async(settings)
    assert len(raw) == 4  # active and next, for both purposes
    for secret in raw + sealed:
        for text in texts:
            assert secret not in text
    jwks = json.loads(texts[0])
    assert all("d" not in key for key in jwks["keys"])
    # The stored form is sealed with the key-encryption key: useless without it.
    assert load_kek(settings)


def _cli(settings: Settings, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCIERGE_")}
    # The same configuration as the test's server (database, key file, skew, ...).
    defaults = Settings()
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if value != getattr(defaults, name) and value is not None:
            env[f"CONCIERGE_{name.upper()}"] = str(value)
    env["CONCIERGE_LOG_LEVEL"] = "WARNING"
    done = subprocess.run(
        [sys.executable, "-m", "backend", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _by_status(jwks: dict[str, Any], purpose: str = "credential") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key in jwks["keys"]:
        if key["purpose"] == purpose:
            out.setdefault(key["status"], []).append(key["kid"])
    return out


async def test_rotation_publishes_next_before_it_signs_and_keeps_retiring(
    world: World, client: AppClient, settings: Settings
) -> None:  # type: ignore[type-arg]
    resident = world.home.people["resident"]
    device_id, _ = await register_device(client, resident)
    before = _by_status(await get_jwks(client))
    (old,), (upcoming,) = before["active"], before["next"]
    first = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    assert header_of(first["credentials"][0]["token"])["kid"] == old

    rotated = await asyncio.to_thread(_cli, settings, "keys", "rotate")
    assert (rotated["active"], rotated["retiring"]) == (upcoming, old)
    assert "private" not in json.dumps(rotated)

    after = _by_status(await get_jwks(client))
    assert after["active"] == [upcoming]
    assert after["retiring"] == [old]  # a credential it signed is still valid
    assert after["next"] == [rotated["next"]]
    assert rotated["next"] not in (old, upcoming)
    second = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    # The key that signs now was published (as next) before it signed anything.
    assert header_of(second["credentials"][0]["token"])["kid"] == upcoming
    # Both credentials verify against the current JWKS (overlap), also in the kiosk's sync.
    synced = await kiosk_sync(client, world.home.kiosk)
    for body in (first, second):
        verify(body["credentials"][0]["token"], synced["jwks"], world.home.kiosk.id)
    # Emergency keys rotate separately.
    emergency = await asyncio.to_thread(_cli, settings, "keys", "rotate", "--purpose", "emergency")
    assert emergency["purpose"] == "emergency"
    assert _by_status(await get_jwks(client))["active"] == [upcoming]


@pytest.fixture
async def short_lived(tmp_path: Path) -> AsyncIterator[tuple[AppClient, World, Settings]]:
    from backend.migrate import upgrade
    from tests.databases import sqlite_url

    url = sqlite_url(tmp_path)
    await asyncio.to_thread(upgrade, url)
    settings = make_settings(url, tmp_path / "var", credential_ttl_seconds=5, clock_skew_seconds=0)
    async with AppClient(app=create_app(settings)) as test_client:
        yield test_client, await build_world(test_client, settings), settings


async def test_retiring_key_is_dropped_once_its_credentials_expired(
    short_lived: tuple[AppClient, World, Settings],
) -> None:  # type: ignore[type-arg]
    client, world, settings = short_lived
    resident = world.home.people["resident"]
    device_id, _ = await register_device(client, resident)
    old = _by_status(await get_jwks(client))["active"][0]
    issued = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    # Rotate in-process (what `concierge keys rotate` runs): a CLI start outlasts the credential.
    runtime = Runtime.create(settings)
    try:
        async with runtime.db.session() as session:
            await signing_keys.rotate(session, runtime, "credential", utcnow())
    finally:
        await runtime.db.dispose()
    assert _by_status(await get_jwks(client))["retiring"] == [old]
    # Wait until the credential (5 s) has expired; no skew configured.
    expires = datetime.fromisoformat(issued["credentials"][0]["expires_at"])
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
    after = _by_status(await get_jwks(client))
    assert "retiring" not in after
    assert all(old not in kids for kids in after.values())


async def test_automatic_schedule_rotates_a_key_that_is_due(tmp_path: Path) -> None:
    from backend.migrate import upgrade
    from tests.databases import sqlite_url

    url = sqlite_url(tmp_path)
    await asyncio.to_thread(upgrade, url)
    settings = make_settings(url, tmp_path / "var", signing_key_rotation_days=30)
    async with AppClient(app=create_app(settings)) as client:
        first = _by_status(await get_jwks(client))
    # A process whose schedule says the key is due rotates it at startup.
    due = make_settings(url, tmp_path / "var", signing_key_rotation_days=0)
    async with AppClient(app=create_app(due)) as client:
        second = _by_status(await get_jwks(client))
    assert second["active"] == first["next"]
    assert second["retiring"] == first["active"]


async def test_a_process_with_another_key_encryption_key_refuses_cleanly(
    world: World, client: AppClient, settings: Settings, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    from tests.world import login

    resident = world.home.people["resident"]
    device_id, _ = await register_device(client, resident)
    check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    # Same database, a different key-encryption key (a misconfigured second host).
    # Its schedule says rotation is due: it must not rotate keys the others cannot unseal.
    stranger = make_settings(
        settings.database_url, tmp_path / "other-var", signing_key_rotation_days=0
    )
    async with AppClient(app=create_app(stranger)) as other:
        fresh = await login(other, resident.email)
        response = await door_credentials(other, fresh, device_id, world.home.door_id)
        assert check(response, 503)["code"] == "service_unavailable"
        # The public keys are still served (they are not sealed), and nothing was rotated.
        assert check(await other.get("/.well-known/jwks.json")) == await get_jwks(client)
    rotate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "backend", "keys", "rotate"],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CONCIERGE_")},
            "CONCIERGE_DATABASE_URL": settings.database_url,
            "CONCIERGE_VAR_DIR": str(tmp_path / "other-var"),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rotate.returncode == 1
    assert "key-encryption key" in rotate.stderr
    assert "Traceback" not in rotate.stderr


async def test_processes_starting_together_agree_on_one_key_set(settings: Settings) -> None:
    """Several server processes start on a fresh database at once: one active and one next
    key per purpose, the same for all of them."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        clients = await asyncio.gather(
            *(stack.enter_async_context(AppClient(app=create_app(settings))) for _ in range(4))
        )
        documents = await asyncio.gather(*(get_jwks(c) for c in clients))
    assert all(d == documents[0] for d in documents)
    statuses = sorted((k["purpose"], k["status"]) for k in documents[0]["keys"])
    assert statuses == sorted(
        [
            ("credential", "active"),
            ("credential", "next"),
            ("emergency", "active"),
            ("emergency", "next"),
        ]
    )
