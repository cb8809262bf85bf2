"""Revocation: staff revoke credentials, devices and users; kiosks get the list at sync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backend.app import create_app
from backend.migrate import upgrade
from backend.settings import Settings
from tests.app_client import AppClient
from tests.conftest import make_settings
from tests.credentials_helpers import door_credentials, public_b64, register_device, sync
from tests.databases import sqlite_url
from tests.world import World, build_world, check


async def _revoke(client: AppClient, staff: Any, **body: Any) -> Any:
    return await client.post(
        "/v1/staff/revocations", json={"reason": "test", **body}, headers=staff.headers
    )


def _entries(synced: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["kind"], e["id"]) for e in synced["revocations"]["entries"]}


async def test_revoked_credential_appears_in_sync(world: World, client: AppClient) -> None:
    resident, staff = world.home.people["resident"], world.home.people["staff"]
    device_id, _ = await register_device(client, resident)
    body = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    credential = body["credentials"][0]
    before = await sync(client, world.home.kiosk)
    assert before["revocations"]["entries"] == []
    revoked = check(await _revoke(client, staff, credential_id=credential["id"]), 201)
    (row,) = revoked["revocations"]
    assert (row["kind"], row["subject_id"]) == ("credential", credential["id"])
    assert row["expires_at"] >= credential["expires_at"]
    after = await sync(client, world.home.kiosk)
    assert ("credential", credential["id"]) in _entries(after)  # the id is the jti
    assert after["revocations"]["version"] > before["revocations"]["version"]
    # Another property's kiosk is not told.
    assert (await sync(client, world.other.kiosk))["revocations"]["entries"] == []


async def test_revoking_a_device_refuses_its_key_and_new_credentials(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    resident, staff = world.home.people["resident"], world.home.people["staff"]
    device_id, device_key = await register_device(client, resident)
    check(await door_credentials(client, resident, device_id, world.home.door_id, count=2), 201)
    check(await _revoke(client, staff, device_id=device_id), 201)
    entries = _entries(await sync(client, world.home.kiosk))
    assert ("device", public_b64(device_key)) in entries  # what the kiosk sees: cnf.jwk.x
    response = await door_credentials(client, resident, device_id, world.home.door_id)
    assert check(response, 404)["code"] == "not_found"


async def test_revoking_a_user_blocks_issuance_while_in_force(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    resident, staff = world.home.people["resident"], world.home.people["staff"]
    device_id, _ = await register_device(client, resident)
    check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    check(await _revoke(client, staff, user_id=resident.user_id), 201)
    assert ("user", resident.user_id) in _entries(await sync(client, world.home.kiosk))
    response = await door_credentials(client, resident, device_id, world.home.door_id)
    assert check(response, 403)["code"] == "access_revoked"
    # Other residents are unaffected.
    neighbour = world.home.people["neighbour"]
    other_device, _ = await register_device(client, neighbour)
    check(await door_credentials(client, neighbour, other_device, world.home.door_id), 201)


async def test_removing_a_member_revokes(world: World, client: AppClient) -> None:
    resident, staff = world.home.people["resident"], world.home.people["staff"]
    device_id, _ = await register_device(client, resident)
    check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    check(
        await client.delete(
            f"/v1/staff/properties/{world.home.property_id}/members/{resident.user_id}",
            headers=staff.headers,
        ),
        204,
    )
    assert ("user", resident.user_id) in _entries(await sync(client, world.home.kiosk))


@pytest.mark.parametrize("what", ["credential_id", "device_id", "user_id"])
async def test_staff_of_another_property_cannot_revoke(
    world: World, client: AppClient, what: str
) -> None:  # type: ignore[type-arg]
    resident = world.home.people["resident"]
    device_id, _ = await register_device(client, resident)
    body = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    target = {
        "credential_id": body["credentials"][0]["id"],
        "device_id": device_id,
        "user_id": resident.user_id,
    }[what]
    response = await _revoke(client, world.other.people["staff"], **{what: target})
    assert check(response, 404)["code"] == "not_found"
    assert (await sync(client, world.home.kiosk))["revocations"]["entries"] == []
    # Not staff at all: the staff API refuses.
    response = await _revoke(client, resident, **{what: target})
    assert response.status_code == 403


async def test_revocation_needs_exactly_one_subject(world: World, client: AppClient) -> None:
    staff = world.home.people["staff"]
    for body in ({}, {"user_id": "a", "device_id": "b"}):
        assert check(await _revoke(client, staff, **body), 400)["code"] == "validation_error"
    missing_reason = await client.post(
        "/v1/staff/revocations", json={"user_id": "a"}, headers=staff.headers
    )
    assert check(missing_reason, 400)["code"] == "validation_error"


@pytest.fixture
async def short_lived(tmp_path: Path) -> AsyncIterator[tuple[AppClient, World, Settings]]:
    url = sqlite_url(tmp_path)
    await asyncio.to_thread(upgrade, url)
    settings = make_settings(url, tmp_path / "var", credential_ttl_seconds=5, clock_skew_seconds=0)
    async with AppClient(app=create_app(settings)) as test_client:
        yield test_client, await build_world(test_client, settings), settings


async def test_entries_drop_out_once_what_they_revoke_has_expired(
    short_lived: tuple[AppClient, World, Settings],
) -> None:  # type: ignore[type-arg]
    client, world, _ = short_lived
    resident, staff = world.home.people["resident"], world.home.people["staff"]
    device_id, _ = await register_device(client, resident)
    body = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    revoked = check(await _revoke(client, staff, credential_id=body["credentials"][0]["id"]), 201)
    listed = await sync(client, world.home.kiosk)
    assert len(listed["revocations"]["entries"]) == 1
    # Wait until the credential (5 s) has expired; no skew configured.
    expires = datetime.fromisoformat(revoked["revocations"][0]["expires_at"])
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
    later = await sync(client, world.home.kiosk)
    assert later["revocations"]["entries"] == []
    assert later["revocations"]["version"] == listed["revocations"]["version"]


async def test_staff_list_revocations_of_their_property(world: World, client: AppClient) -> None:  # type: ignore[type-arg]
    resident, staff = world.home.people["resident"], world.home.people["staff"]
    device_id, _ = await register_device(client, resident)
    body = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    check(await _revoke(client, staff, credential_id=body["credentials"][0]["id"]), 201)
    check(await _revoke(client, staff, user_id=world.home.people["neighbour"].user_id), 201)
    url = f"/v1/staff/properties/{world.home.property_id}/revocations"
    first = check(await client.get(url, params={"limit": 1}, headers=staff.headers))
    assert [r["kind"] for r in first["items"]] == ["user"]  # newest first
    rest = check(
        await client.get(
            url, params={"limit": 1, "cursor": first["next_cursor"]}, headers=staff.headers
        )
    )
    assert [r["kind"] for r in rest["items"]] == ["credential"]
    assert rest["next_cursor"] is None
    denied = await client.get(url, headers=world.other.people["staff"].headers)
    assert check(denied, 404)["code"] == "not_found"


async def test_staff_see_the_issued_credential_record(world: World, client: AppClient) -> None:  # type: ignore[type-arg]
    resident, staff = world.home.people["resident"], world.home.people["staff"]
    device_id, _ = await register_device(client, resident)
    body = check(
        await door_credentials(client, resident, device_id, world.home.door_id, count=2), 201
    )
    issued = {c["id"] for c in body["credentials"]}
    check(await _revoke(client, staff, credential_id=sorted(issued)[0]), 201)
    url = f"/v1/staff/properties/{world.home.property_id}/credentials"
    listed = check(
        await client.get(url, params={"user_id": resident.user_id}, headers=staff.headers)
    )
    assert {c["id"] for c in listed["items"]} == issued
    assert all(c["device_id"] == device_id and "token" not in c for c in listed["items"])
    valid = check(await client.get(url, params={"valid_only": True}, headers=staff.headers))
    assert {c["id"] for c in valid["items"]} == {sorted(issued)[1]}
    denied = await client.get(url, headers=world.other.people["staff"].headers)
    assert check(denied, 404)["code"] == "not_found"
