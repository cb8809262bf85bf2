"""Kiosk journal ingest: idempotency (also under concurrent resends), gaps, forks, redemptions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.services import journal
from tests.app_client import AppClient
from tests.credentials_helpers import (
    audit,
    decision,
    door_credentials,
    entry,
    register_device,
    sync,
    upload,
)
from tests.world import KioskIdentity, World, check, enroll_kiosk, public_key_b64


async def _credential(client: AppClient, world: World) -> dict[str, Any]:
    resident = world.home.people["resident"]
    device_id, _ = await register_device(client, resident)
    body = check(await door_credentials(client, resident, device_id, world.home.door_id), 201)
    item: dict[str, Any] = body["credentials"][0]
    return item


async def test_resending_a_batch_stores_it_once(world: World, client: AppClient) -> None:
    kiosk = world.home.kiosk
    batch = [entry(1), entry(2, "door.opened", door_id=world.home.door_id), entry(3)]
    first = await upload(client, kiosk, batch)
    assert (first["accepted_through"], first["gaps"], first["stored"]) == (3, [], 3)
    again = await upload(client, kiosk, batch)
    assert (again["accepted_through"], again["stored"], again["duplicates"]) == (3, 0, 3)
    assert again["forked"] == []
    # Another kiosk's seq 1 is its own.
    other = await upload(client, world.other.kiosk, [entry(1)])
    assert (other["accepted_through"], other["stored"]) == (1, 1)
    assert (await sync(client, kiosk))["journal_accepted_through"] == 3


async def test_gaps_are_reported_until_filled(world: World, client: AppClient) -> None:
    kiosk = world.home.kiosk
    body = await upload(client, kiosk, [entry(s) for s in (1, 2, 5, 6, 9)])
    assert body["accepted_through"] == 2
    assert body["gaps"] == [[3, 4], [7, 8]]
    body = await upload(client, kiosk, [entry(s) for s in (3, 4, 7)])
    assert body["accepted_through"] == 7
    assert body["gaps"] == [[8, 8]]
    body = await upload(client, kiosk, [entry(3), entry(8)])
    assert (body["accepted_through"], body["gaps"]) == (9, [])
    # A journal that starts late reports the gap from 1.
    late = await upload(client, world.other.kiosk, [entry(4)])
    assert (late["accepted_through"], late["gaps"]) == (0, [[1, 3]])


async def test_redemption_marks_credential_and_records_event_once(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    credential = await _credential(client, world)
    kiosk, staff = world.home.kiosk, world.home.people["staff"]
    batch = [entry(1), decision(2, credential["id"], credential["target"])]
    # The same batch sent many times at once (fresh assertions each) is stored once.
    results = await asyncio.gather(*(upload(client, kiosk, batch) for _ in range(6)))
    assert sum(r["stored"] for r in results) == 2
    assert all(r["accepted_through"] == 2 for r in results)
    redeemed = await audit(client, staff, world.home.property_id, "credential.redeemed")
    assert len(redeemed) == 1
    data = redeemed[0]["data"]
    assert data["credential_id"] == credential["id"]
    assert data["kiosk_id"] == kiosk.id
    assert data["revoked"] is False
    assert data["door_id"] == world.home.door_id
    assert await audit(client, staff, world.home.property_id, "credential.double_spent") == []


async def test_second_redemption_of_a_jti_is_a_double_spend(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    credential = await _credential(client, world)
    kiosk, staff = world.home.kiosk, world.home.people["staff"]
    first = decision(1, credential["id"], credential["target"])
    await upload(client, kiosk, [first])
    # A kiosk restored from a backup spends the same credential again under a later seq.
    second = decision(2, credential["id"], credential["target"])
    body = await upload(client, kiosk, [second])
    assert body["stored"] == 1
    spent = await audit(client, staff, world.home.property_id, "credential.double_spent")
    assert len(spent) == 1
    assert spent[0]["severity"] == "critical"
    assert spent[0]["data"]["credential_id"] == credential["id"]
    assert spent[0]["data"]["redemptions"] == 2
    assert len(await audit(client, staff, world.home.property_id, "credential.redeemed")) == 1
    # Resending both entries changes nothing.
    body = await upload(client, kiosk, [first, second])
    assert (body["stored"], body["duplicates"], body["forked"]) == (0, 2, [])
    assert len(await audit(client, staff, world.home.property_id, "credential.double_spent")) == 1


async def test_same_seq_with_other_content_is_a_fork(world: World, client: AppClient) -> None:
    credential = await _credential(client, world)
    kiosk, staff = world.home.kiosk, world.home.people["staff"]
    original = [entry(1), entry(2, "door.opened", door_id=world.home.door_id)]
    await upload(client, kiosk, original)
    # A cloned kiosk used seq 2 for something else: a redemption of the same credential it
    # also spent elsewhere would be invisible without fork handling.
    clone = decision(2, credential["id"], credential["target"])
    body = await upload(client, kiosk, [clone])
    assert body["forked"] == [2]
    assert body["stored"] == 0
    forks = await audit(client, staff, world.home.property_id, "kiosk.journal_forked")
    assert len(forks) == 1
    assert forks[0]["severity"] == "critical"
    assert forks[0]["data"]["kiosk_id"] == kiosk.id
    assert forks[0]["data"]["seq"] == 2
    # Same forked content again: no new alarm.
    await upload(client, kiosk, [clone])
    assert len(await audit(client, staff, world.home.property_id, "kiosk.journal_forked")) == 1
    # The forked redemption still counts: the original then spends the same credential.
    await upload(client, kiosk, [decision(3, credential["id"], credential["target"])])
    assert len(await audit(client, staff, world.home.property_id, "credential.double_spent")) == 1


async def test_a_re_enrolled_kiosk_starts_a_new_journal_not_a_fork(
    world: World,
    client: AppClient,
) -> None:
    """A replaced kiosk computer is re-enrolled and starts its journal at seq 1 again: its
    entries are stored and take effect; the old computer's journal stays as it was."""
    credential = await _credential(client, world)
    kiosk, staff = world.home.kiosk, world.home.people["staff"]
    await upload(client, kiosk, [entry(1), entry(2), entry(3)])
    code = check(
        await client.post(f"/v1/staff/kiosks/{kiosk.id}/enrollment-code", headers=staff.headers),
        201,
    )["enrollment_code"]
    new_key = Ed25519PrivateKey.generate()
    check(
        await client.post(
            "/v1/kiosk/enroll",
            json={"enrollment_code": code, "public_key": public_key_b64(new_key)},
        )
    )
    replaced = KioskIdentity(kiosk.id, kiosk.property_id, new_key)
    assert (await sync(client, replaced))["journal_accepted_through"] == 0
    fresh = [entry(1), decision(2, credential["id"], credential["target"])]
    body = await upload(client, replaced, fresh)
    assert (body["stored"], body["forked"], body["accepted_through"]) == (2, [], 2)
    assert await audit(client, staff, world.home.property_id, "kiosk.journal_forked") == []
    assert len(await audit(client, staff, world.home.property_id, "credential.redeemed")) == 1
    # Resending the new journal is idempotent, and a different seq 2 is a fork of *this* journal.
    again = await upload(client, replaced, fresh)
    assert (again["stored"], again["duplicates"]) == (0, 2)
    fork = await upload(client, replaced, [entry(2, "door.opened", door_id=world.home.door_id)])
    assert fork["forked"] == [2]
    # The old computer's key no longer works.
    refused = await client.post(
        "/v1/kiosk/journal", json={"entries": [entry(4)]}, headers=kiosk.headers()
    )
    assert refused.status_code == 401


async def test_broken_hash_chain_is_a_fork(world: World, client: AppClient) -> None:
    kiosk, staff = world.home.kiosk, world.home.people["staff"]
    await upload(client, kiosk, [entry(1), entry(2)])
    stranger = entry(3)
    stranger["prev_hash"] = "ab" * 32  # does not link to the stored seq 2
    body = await upload(client, kiosk, [stranger])
    assert body["forked"] == [3]
    forks = await audit(client, staff, world.home.property_id, "kiosk.journal_forked")
    assert [f["data"]["reason"] for f in forks] == ["chain_broken"]


async def test_redemption_of_a_credential_revoked_while_offline_is_flagged(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    credential = await _credential(client, world)
    kiosk, staff = world.home.kiosk, world.home.people["staff"]
    check(
        await client.post(
            "/v1/staff/revocations",
            json={"credential_id": credential["id"], "reason": "phone reported stolen"},
            headers=staff.headers,
        ),
        201,
    )
    later = decision(1, credential["id"], credential["target"])
    later["occurred_at"] = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    await upload(client, kiosk, [later])
    (redeemed,) = await audit(client, staff, world.home.property_id, "credential.redeemed")
    assert redeemed["data"]["revoked"] is True
    assert redeemed["severity"] == "warning"


async def test_denials_and_foreign_credentials_change_nothing(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    credential = await _credential(client, world)
    staff = world.home.people["staff"]
    denied = decision(1, credential["id"], credential["target"], granted=False, reason="replay")
    await upload(client, world.home.kiosk, [denied])
    # A kiosk of another property cannot mark this property's credential redeemed.
    await upload(client, world.other.kiosk, [decision(1, credential["id"], credential["target"])])
    assert await audit(client, staff, world.home.property_id, "credential.redeemed") == []


async def test_handlers_run_once_per_entry_and_failures_do_not_block(
    world: World, client: AppClient
) -> None:  # type: ignore[type-arg]
    calls: list[int] = []

    async def counting(session: Any, kiosk: Any, entry_row: Any, now: Any) -> None:
        calls.append(entry_row.seq)

    async def failing(session: Any, kiosk: Any, entry_row: Any, now: Any) -> None:
        raise RuntimeError("handler bug")

    journal.JOURNAL_HANDLERS["test.counted"] = counting
    journal.JOURNAL_HANDLERS["test.failing"] = failing
    try:
        batch = [entry(1, "test.counted"), entry(2, "test.failing"), entry(3, "test.counted")]
        body = await upload(client, world.home.kiosk, batch)
        assert body["accepted_through"] == 3
        await upload(client, world.home.kiosk, batch)
        assert calls == [1, 3]
    finally:
        del journal.JOURNAL_HANDLERS["test.counted"]
        del journal.JOURNAL_HANDLERS["test.failing"]


async def test_journal_requires_a_valid_fresh_assertion(world: World, client: AppClient) -> None:  # type: ignore[type-arg]
    kiosk = world.home.kiosk
    headers = kiosk.headers()
    first = await client.post("/v1/kiosk/journal", json={"entries": [entry(1)]}, headers=headers)
    assert first.status_code == 200
    replay = await client.post("/v1/kiosk/journal", json={"entries": [entry(2)]}, headers=headers)
    assert check(replay, 401)["code"] == "kiosk_assertion_replayed"
    anonymous = await client.post("/v1/kiosk/journal", json={"entries": [entry(2)]})
    assert anonymous.status_code == 401
    bad = await client.post(
        "/v1/kiosk/journal", json={"entries": [{**entry(2), "seq": 0}]}, headers=kiosk.headers()
    )
    assert check(bad, 400)["code"] == "validation_error"


async def test_emergency_credential_is_good_once_per_kiosk(world: World, client: AppClient) -> None:  # type: ignore[type-arg]
    home = world.home
    staff = home.people["staff"]
    device_id, _ = await register_device(client, staff)
    check(
        await client.put(
            f"/v1/staff/properties/{home.property_id}/members/{staff.user_id}/emergency-permission",
            json={"can_emergency": True},
            headers=world.admin.headers,
        )
    )
    issued = check(
        await client.post(
            f"/v1/staff/properties/{home.property_id}/emergency-access",
            json={"device_id": device_id, "reason": "fire alarm"},
            headers=staff.headers,
        ),
        201,
    )
    jti = issued["credential"]["id"]
    second_kiosk = await enroll_kiosk(client, staff, home.property_id, "Garage controller")
    use = {"emergency": True, "role": "staff"}
    await upload(client, home.kiosk, [decision(1, jti, f"door:{home.door_id}", **use)])
    await upload(client, second_kiosk, [decision(1, jti, "door:garage", **use)])
    redeemed = await audit(client, staff, home.property_id, "credential.redeemed")
    assert sorted(e["data"]["kiosk_id"] for e in redeemed) == sorted(
        [home.kiosk.id, second_kiosk.id]
    )
    assert all(e["data"]["emergency"] for e in redeemed)
    assert await audit(client, staff, home.property_id, "credential.double_spent") == []
    # Every use alerted staff (the emergency feature's redemption hook ran at each kiosk).
    assert len(await audit(client, staff, home.property_id, "emergency.used")) == 2
    # The same kiosk twice is a double spend (its spent store was rolled back).
    await upload(client, home.kiosk, [decision(2, jti, f"door:{home.door_id}", **use)])
    (spent,) = await audit(client, staff, home.property_id, "credential.double_spent")
    assert spent["data"]["first_kiosk_id"] == home.kiosk.id
