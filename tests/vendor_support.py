"""Helpers for vendor-visit and key tests: phones, a real kiosk (store + Verifier) and setup calls.

Everything goes through public interfaces: the HTTP APIs, and for the kiosk the ``kiosk``
package's own store and Verifier, synced with ``GET /v1/kiosk/sync`` and uploading its
hash-chained journal to ``POST /v1/kiosk/journal`` with fresh kiosk assertions.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.assertion import public_key_b64
from kiosk.credential import make_presentation
from kiosk.store import KioskStore
from kiosk.verifier import Decision, Verifier
from tests.app_client import AppClient
from tests.world import KioskIdentity, Person, Site, check

Client = AppClient


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Phone:
    person: Person
    device_id: str
    key: Ed25519PrivateKey


async def phone_of(client: Client, person: Person) -> Phone:
    key = Ed25519PrivateKey.generate()
    device = check(
        await client.post(
            "/v1/devices",
            json={"platform": "android", "public_key": public_key_b64(key)},
            headers=person.headers,
        ),
        201,
    )
    return Phone(person, device["id"], key)


@dataclass
class KioskSim:
    """The kiosk computer: its own store and Verifier, talking to the server like the agent."""

    identity: KioskIdentity
    store: KioskStore
    synced: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, identity: KioskIdentity, directory: Path) -> KioskSim:
        directory.mkdir(parents=True, exist_ok=True)
        return cls(identity, KioskStore(directory / f"kiosk-{identity.id}.db"))

    async def sync(self, client: Client) -> dict[str, Any]:
        doc = check(await client.get("/v1/kiosk/sync", headers=self.identity.headers()))
        self.store.save_sync(doc, doc["server_time"])
        self.synced = doc
        return doc

    def present(self, phone: Phone, token: str, *, aud: str | None = None) -> str:
        return make_presentation(
            token, phone.key, aud or self.identity.id, nonce=secrets.token_urlsafe(16)
        )

    def redeem(
        self, phone: Phone, token: str, *, target: str | None = None, aud: str | None = None
    ) -> Decision:
        return Verifier(self.store).redeem(
            self.present(phone, token, aud=aud), channel="qr", target=target
        )

    def report(self, type_: str, data: dict[str, Any]) -> int:
        return self.store.journal_append(type_, data)

    async def upload(self, client: Client) -> dict[str, Any]:
        entries = self.store.pending_entries()
        body = check(
            await client.post(
                "/v1/kiosk/journal", json={"entries": entries}, headers=self.identity.headers()
            )
        )
        self.store.acknowledge(body["accepted_through"])
        return body


async def create_key(
    client: Client, site: Site, label: str = "4B unit key", unit: str | None = "4B"
) -> dict[str, Any]:
    body: dict[str, Any] = {"label": label, "kind": "unit" if unit else "master"}
    if unit:
        body["unit_id"] = site.units[unit]
    return check(
        await client.post(
            f"/v1/staff/properties/{site.property_id}/keys",
            json=body,
            headers=site.people["staff"].headers,
        ),
        201,
    )


async def create_visit(
    client: Client,
    site: Site,
    *,
    starts_at: datetime,
    ends_at: datetime,
    key_ids: list[str] | None = None,
    door_ids: list[str] | None = None,
    vendor: str = "vendor",
    status: int = 201,
) -> dict[str, Any]:
    return check(
        await client.post(
            f"/v1/staff/properties/{site.property_id}/work-orders",
            json={
                "unit_id": site.units["4B"],
                "vendor_user_id": site.people[vendor].user_id,
                "description": "Fix the kitchen sink",
                "starts_at": iso(starts_at),
                "ends_at": iso(ends_at),
                "door_ids": [site.door_id] if door_ids is None else door_ids,
                "key_ids": key_ids or [],
            },
            headers=site.people["staff"].headers,
        ),
        status,
    )


async def place(
    client: Client, site: Site, key_id: str, work_order_id: str | None, compartment: str = "K1"
) -> dict[str, Any]:
    body: dict[str, Any] = {"compartment_id": site.compartments[compartment]}
    if work_order_id:
        body["work_order_id"] = work_order_id
    return check(
        await client.post(
            f"/v1/staff/keys/{key_id}/place", json=body, headers=site.people["staff"].headers
        )
    )


async def credentials_for(
    client: Client,
    phone: Phone,
    work_order_id: str,
    *,
    target: str | None = None,
    status: int = 201,
) -> Any:
    body: dict[str, Any] = {"device_id": phone.device_id, "work_order_id": work_order_id}
    if target:
        body["target"] = target
    return check(
        await client.post("/v1/credentials", json=body, headers=phone.person.headers), status
    )


async def events_of(client: Client, site: Site, person: str = "staff") -> list[dict[str, Any]]:
    """Audit trail of the property (staff view), oldest first."""
    body = check(
        await client.get(
            f"/v1/staff/properties/{site.property_id}/audit",
            params={"format": "json"},
            headers=site.people[person].headers,
        )
    )
    items: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
    return items


async def my_events(client: Client, person: Person) -> list[dict[str, Any]]:
    """What a phone user sees (``GET /v1/events``)."""
    body = check(await client.get("/v1/events", headers=person.headers))
    items: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
    return items


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
