"""Parcels from the kiosk journal: offline intake reconciled on upload (with conflicts surfaced to
staff), offline PIN pickups, and pickup with an app credential redeemed at the kiosk."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from backend.runtime import Runtime
from backend.settings import Settings
from kiosk.store import GENESIS_HASH, entry_hash
from tests.app_client import AppClient
from tests.credentials_helpers import register_device
from tests.test_parcels_lifecycle import audit_events, compartment_states, deliver, deposit
from tests.world import Site, World, add_compartment, check


class Journal:
    """A kiosk's hash-chained journal, as the kiosk agent writes it."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.entries: list[dict[str, Any]] = []

    def append(
        self, type_: str, data: dict[str, Any], at: datetime | None = None
    ) -> dict[str, Any]:
        seq = len(self.entries) + 1
        prev = self.entries[-1]["hash"] if self.entries else GENESIS_HASH
        occurred_at = (at or datetime.now(UTC)).isoformat()
        entry = {
            "seq": seq,
            "type": type_,
            "occurred_at": occurred_at,
            "prev_hash": prev,
            "hash": entry_hash(prev, seq, type_, occurred_at, data),
            "data": data,
        }
        self.entries.append(entry)
        return entry

    async def upload(self, client: AppClient, entries: list[dict[str, Any]] | None = None) -> Any:  # type: ignore[type-arg]
        return check(
            await client.post(
                "/v1/kiosk/journal",
                json={"entries": entries if entries is not None else self.entries},
                headers=self.site.kiosk.headers(),
            )
        )


async def parcels_of(client: AppClient, site: Site, **filters: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    body = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/parcels?{query}",
            headers=site.people["staff"].headers,
        )
    )
    return list(body["items"])


async def test_offline_intake_is_reconciled_and_conflicts_reach_staff(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    resident = site.people["resident"]
    journal = Journal(site)
    closed = datetime.now(UTC) - timedelta(minutes=30)
    journal.append(
        "parcel.deposited_offline",
        {
            "carrier": "FedEx",
            "tracking": "OFF-1",
            "unit": "4B",
            "size": "S",
            "compartment_id": site.compartments["A1"],
            "closed_at": closed.isoformat(),
        },
        at=closed,
    )
    # Meanwhile the server (online intake through another path) assigned B1 ...
    online = await deliver(client, site, size="M", unit="1A")
    assert online["compartment"]["label"] == "B1"
    await deposit(client, site, online["parcel_id"])
    # ... which the offline kiosk also used.
    journal.append(
        "parcel.deposited_offline",
        {
            "carrier": "DHL",
            "tracking": "OFF-2",
            "unit": "4B",
            "size": "M",
            "compartment_id": site.compartments["B1"],
        },
    )
    # A compartment of another kiosk, and an unknown unit.
    journal.append(
        "parcel.deposited_offline",
        {
            "carrier": "DHL",
            "tracking": "OFF-3",
            "unit": "4B",
            "size": "S",
            "compartment_id": world.other.compartments["A1"],
        },
    )
    journal.append(
        "parcel.deposited_offline",
        {
            "carrier": "DHL",
            "tracking": "OFF-4",
            "unit": "99Z",
            "size": "S",
            "compartment_id": site.compartments["C1"],
        },
    )
    ack = await journal.upload(client)
    assert ack["accepted_through"] == 4

    deposited = await parcels_of(client, site, unit="4B", state="deposited")
    assert [(p["tracking"], p["compartment"]["label"], p["offline"]) for p in deposited] == [
        ("OFF-1", "A1", True)
    ]
    offline_parcel = deposited[0]
    assert offline_parcel["deposited_at"].startswith(closed.isoformat()[:19])
    mine = check(await client.get(f"/v1/parcels/{offline_parcel['id']}", headers=resident.headers))
    assert mine["pickup_pin"] is not None
    assert (await compartment_states(client, site))["A1"] == "occupied"
    # The conflicting parcel is recorded without a compartment; staff are told.
    (announced,) = await parcels_of(client, site, state="announced")
    assert announced["tracking"] == "OFF-2"
    assert announced["compartment"] is None
    events = await audit_events(client, site)
    conflicts = {e["data"]["reason"]: e for e in events if e["type"] == "parcel.conflict"}
    assert set(conflicts) == {"compartment_taken", "foreign_compartment", "unknown_unit"}
    assert conflicts["compartment_taken"]["data"]["other_parcel_id"] == online["parcel_id"]
    assert conflicts["compartment_taken"]["severity"] == "warning"
    deposits = [e for e in events if e["type"] == "parcel.deposited"]
    assert {e["data"]["parcel_id"] for e in deposits} == {online["parcel_id"], offline_parcel["id"]}
    # Nothing went to the other property.
    other_events = await audit_events(client, world.other)
    assert not [e for e in other_events if e["type"].startswith("parcel.")]
    assert (await compartment_states(client, world.other))["A1"] == "free"

    # Uploading the same batch again changes nothing.
    again = await journal.upload(client)
    assert again["duplicates"] == 4
    assert len(await parcels_of(client, site, unit="4B")) == 2
    # Staff move the conflicting parcel to the office.
    moved = check(
        await client.post(
            f"/v1/staff/parcels/{announced['id']}/overflow", headers=site.people["staff"].headers
        )
    )
    assert moved["state"] == "overflowed"


async def test_pin_hashes_are_derived_after_the_deposit_once_per_pin(
    client: AppClient,
    world: World,
    settings: Settings,
) -> None:
    """The deposit only draws the PIN; the background job hashes it once for all the unit's
    waiting parcels at the kiosk, and the synced hash checks the resident's PIN."""
    from backend.services import parcels as parcel_service
    from backend.services.pin_hasher import derive_pending

    site = world.home
    first = await deliver(client, site, size="S")
    second = await deliver(client, site, size="M")
    for parcel in (first, second):
        await deposit(client, site, parcel["parcel_id"])
    runtime = Runtime.create(settings)  # the job as a server process runs it, on its own engine
    parcel_service.register_runtime(runtime)
    try:
        assert await derive_pending(runtime) == 1  # one PIN for the unit's two parcels
        assert await derive_pending(runtime) == 0
    finally:
        await runtime.db.dispose()
    sync = check(await client.get("/v1/kiosk/sync", headers=site.kiosk.headers()))
    entries = {e["parcel_id"]: e for e in sync["pin_hashes"]}
    assert set(entries) == {first["parcel_id"], second["parcel_id"]}
    assert entries[first["parcel_id"]]["pin_hash"] == entries[second["parcel_id"]]["pin_hash"]
    pin = check(
        await client.get(
            f"/v1/parcels/{first['parcel_id']}", headers=site.people["resident"].headers
        )
    )["pickup_pin"]
    stored = entries[first["parcel_id"]]["pin_hash"]
    assert parcel_service.check_pin_hash(stored, pin)
    assert not parcel_service.check_pin_hash(stored, "000000" if pin != "000000" else "111111")


async def test_pin_hashes_wait_while_deposits_keep_arriving(
    client: AppClient,
    world: World,
    settings: Settings,
) -> None:
    """The job holds back while a courier is at work (a deposit within the quiet window), up
    to its maximum delay, then hashes; a sync meanwhile still gets every hash (derived on the
    spot)."""

    from backend.models.base import utcnow
    from backend.services import parcels as parcel_service
    from backend.services.pin_hasher import derive_due

    site = world.home
    parcel = await deliver(client, site, size="S")
    await deposit(client, site, parcel["parcel_id"])
    deposited = utcnow()
    runtime = Runtime.create(settings)
    parcel_service.register_runtime(runtime)
    try:
        busy = deposited + timedelta(seconds=0.5)
        assert await derive_due(runtime, busy, quiet_seconds=60, max_delay_seconds=60) == 0
        # Held back longer than the maximum delay: hashed even though deposits continue.
        assert await derive_due(runtime, busy, quiet_seconds=60, max_delay_seconds=0) == 1
        second = await deliver(client, site, size="M", unit="1A")
        await deposit(client, site, second["parcel_id"])
        assert await derive_due(runtime, utcnow(), quiet_seconds=60) == 0
        # Quiet again: everything pending is hashed.
        later = utcnow() + timedelta(seconds=2)
        assert await derive_due(runtime, later, quiet_seconds=1) == 1
        assert await derive_due(runtime, later, quiet_seconds=1) == 0
    finally:
        await runtime.db.dispose()


async def test_a_sync_derives_a_bounded_number_of_pin_hashes_itself(
    client: AppClient, world: World
) -> None:
    """With no job running, each sync derives at most ``SYNC_DERIVE_LIMIT`` PINs' slow hashes
    (oldest deposit first), so a sync after a burst stays short; the next sync brings the rest."""
    from backend.services.parcels import SYNC_DERIVE_LIMIT

    site = world.home
    units = [f"9{i:02d}" for i in range(SYNC_DERIVE_LIMIT + 2)]
    for label in units:
        check(
            await client.post(
                f"/v1/staff/properties/{site.property_id}/units",
                json={"label": label},
                headers=world.admin.headers,
            ),
            201,
        )
        await add_compartment(client, site, f"Z{label}", "S")
    deposited = []
    for label in units:  # one parcel per unit: one PIN each
        parcel = await deliver(client, site, size="S", unit=label)
        await deposit(client, site, parcel["parcel_id"])
        deposited.append(parcel["parcel_id"])

    first = check(await client.get("/v1/kiosk/sync", headers=site.kiosk.headers()))
    assert sorted(e["parcel_id"] for e in first["pin_hashes"]) == sorted(
        deposited[:SYNC_DERIVE_LIMIT]
    )
    second = check(await client.get("/v1/kiosk/sync", headers=site.kiosk.headers()))
    assert sorted(e["parcel_id"] for e in second["pin_hashes"]) == sorted(deposited)


async def test_offline_pin_pickup_from_journal(client: AppClient, world: World) -> None:
    site = world.home
    parcel = await deliver(client, site, size="S")
    await deposit(client, site, parcel["parcel_id"])
    sync = check(await client.get("/v1/kiosk/sync", headers=site.kiosk.headers()))
    (entry,) = sync["pin_hashes"]
    assert entry["parcel_id"] == parcel["parcel_id"]
    assert entry["unit"] == "4B"
    assert entry["compartment_id"] == site.compartments["A1"]
    pin = check(
        await client.get(
            f"/v1/parcels/{parcel['parcel_id']}", headers=site.people["resident"].headers
        )
    )["pickup_pin"]

    # The kiosk can check the PIN offline from the synced hash with the standard library alone.
    def check_offline(candidate: str) -> bool:
        salt = entry["salt"] + "=" * (-len(entry["salt"]) % 4)
        digest = hashlib.scrypt(
            candidate.encode(),
            salt=base64.urlsafe_b64decode(salt),
            n=entry["n"],
            r=entry["r"],
            p=entry["p"],
            dklen=32,
        )
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == entry["hash"]

    assert check_offline(pin)
    assert not check_offline("000000" if pin != "000000" else "111111")

    journal = Journal(site)
    journal.append("pin.pickup", {"unit": "4B", "granted": False, "reason": "wrong_pin"})
    journal.append(
        "pin.pickup",
        {"unit": "4B", "granted": True, "reason": "pin_ok", "parcel_ids": [parcel["parcel_id"]]},
    )
    await journal.upload(client)
    (picked,) = await parcels_of(client, site, state="picked_up")
    assert picked["id"] == parcel["parcel_id"]
    assert (await compartment_states(client, site))["A1"] == "free"
    sync = check(await client.get("/v1/kiosk/sync", headers=site.kiosk.headers()))
    assert sync["pin_hashes"] == []
    report = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/reports/weekly",
            headers=site.people["staff"].headers,
        )
    )
    assert report["failed_pin_attempts"] == 1
    events = await audit_events(client, site)
    assert [e["data"]["channel"] for e in events if e["type"] == "pin.failed"] == ["offline"]


async def test_pickup_with_app_credential_redeemed_at_kiosk(
    client: AppClient,
    world: World,
) -> None:
    site = world.home
    resident, neighbour = site.people["resident"], site.people["neighbour"]
    first = await deliver(client, site, size="S")
    second = await deliver(client, site, size="M")
    await deposit(client, site, first["parcel_id"])
    await deposit(client, site, second["parcel_id"])

    # The neighbour cannot get a credential for 4B's parcel.
    device_n, _ = await register_device(client, neighbour)
    denied = check(
        await client.post(
            "/v1/credentials",
            json={"device_id": device_n, "parcel_id": first["parcel_id"]},
            headers=neighbour.headers,
        ),
        404,
    )
    assert denied["code"] == "not_found"

    device, _ = await register_device(client, resident)
    issued = check(
        await client.post(
            "/v1/credentials",
            json={"device_id": device, "parcel_id": first["parcel_id"]},
            headers=resident.headers,
        ),
        201,
    )["credentials"]
    # Both of 4B's parcels at this kiosk open in the same pickup.
    targets = sorted(c["target"] for c in issued)
    assert targets == sorted(
        [f"compartment:{site.compartments['A1']}", f"compartment:{site.compartments['B1']}"]
    )
    assert {c["kiosk_id"] for c in issued} == {site.kiosk.id}

    journal = Journal(site)
    for credential in issued:
        claims = jwt.decode(credential["token"], options={"verify_signature": False})
        journal.append(
            "decision",
            {
                "granted": True,
                "reason": "ok",
                "jti": claims["jti"],
                "target": claims["tgt"],
                "sub": claims["sub"],
                "role": claims["role"],
                "emergency": False,
                "channel": "qr",
            },
        )
    await journal.upload(client)
    for parcel in (first, second):
        view = check(
            await client.get(f"/v1/parcels/{parcel['parcel_id']}", headers=resident.headers)
        )
        assert view["state"] == "picked_up"
    states = await compartment_states(client, site)
    assert states["A1"] == states["B1"] == "free"
    events = await audit_events(client, site)
    picked = [e for e in events if e["type"] == "parcel.picked_up"]
    assert {e["data"]["parcel_id"] for e in picked} == {first["parcel_id"], second["parcel_id"]}
    assert all(e["data"]["channel"] == "credential" for e in picked)
    assert all(e["actor"] == f"user:{resident.user_id}" for e in picked)
    # A picked-up parcel gets no new credential.
    gone = check(
        await client.post(
            "/v1/credentials",
            json={"device_id": device, "parcel_id": first["parcel_id"]},
            headers=resident.headers,
        ),
        409,
    )
    assert gone["code"] == "parcel_state_conflict"


async def test_reservation_then_offline_deposit_is_reconciled(
    client: AppClient,
    world: World,
) -> None:
    """The network dropped between intake and the door closing: the kiosk journals the deposit;
    in the reserved compartment it confirms it, in another one it moves the parcel there."""
    site = world.home
    same = await deliver(client, site, size="S")  # A1 reserved
    moved = await deliver(client, site, size="M")  # B1 reserved
    journal = Journal(site)
    for parcel, label in ((same, "A1"), (moved, "C1")):
        journal.append(
            "parcel.deposited_offline",
            {
                "carrier": "UPS",
                "tracking": parcel["tracking"],
                "unit": "4B",
                "size": parcel["size"],
                "compartment_id": site.compartments[label],
            },
        )
    await journal.upload(client)
    deposited = {
        p["id"]: p["compartment"]["label"]
        for p in await parcels_of(client, site, state="deposited")
    }
    assert deposited == {same["parcel_id"]: "A1", moved["parcel_id"]: "C1"}
    states = await compartment_states(client, site)
    assert (states["A1"], states["B1"], states["C1"]) == ("occupied", "free", "occupied")
