"""A seeded world built through the public API, with a second property for attacker-side tests.

Property A ("home"): units 1A and 4B, a kiosk (enrolled, with parcel and key compartments), a
door; members: staff, resident of 4B, resident of 1A, vendor (Acme), courier.
Property B ("other"): its own staff, resident, kiosk. Only the admin is created directly (as
``concierge create-admin`` does); everyone else joins by invitation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.runtime import Runtime
from backend.services.accounts import create_admin
from backend.settings import Settings
from kiosk.assertion import public_key_b64, sign_assertion
from tests.app_client import AppClient

PASSWORD = "correct horse battery"
_counter = itertools.count()


@dataclass
class Person:
    user_id: str
    email: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class KioskIdentity:
    id: str
    property_id: str
    key: Ed25519PrivateKey

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {sign_assertion(self.key, self.id)}"}


@dataclass
class Site:
    property_id: str
    units: dict[str, str]
    kiosk: KioskIdentity
    compartments: dict[str, str]
    door_id: str
    people: dict[str, Person] = field(default_factory=dict)


@dataclass
class World:
    admin: Person
    home: Site
    other: Site


def check(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json() if response.content else None


async def login(client: AppClient, email: str, password: str = PASSWORD) -> Person:
    body = check(await client.post("/v1/auth/token", json={"email": email, "password": password}))
    me = check(
        await client.get("/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    )
    return Person(me["id"], email, body["access_token"], body["refresh_token"])


async def invite(
    client: AppClient,
    inviter: Person,
    property_id: str,
    role: str,
    *,
    unit_id: str | None = None,
    company: str | None = None,
) -> Person:
    email = f"{role}{next(_counter)}@example.test"
    body: dict[str, Any] = {"email": email, "role": role}
    if unit_id:
        body["unit_id"] = unit_id
    if company:
        body["company"] = company
    code = check(
        await client.post(
            f"/v1/staff/properties/{property_id}/invitations", json=body, headers=inviter.headers
        ),
        201,
    )["code"]
    tokens = check(
        await client.post(
            "/v1/auth/invitations/accept",
            json={"code": code, "password": PASSWORD, "name": role.title()},
        )
    )
    me = check(
        await client.get("/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    )
    return Person(me["id"], email, tokens["access_token"], tokens["refresh_token"])


async def enroll_kiosk(
    client: AppClient, staff: Person, property_id: str, name: str
) -> KioskIdentity:  # type: ignore[type-arg]
    created = check(
        await client.post(
            f"/v1/staff/properties/{property_id}/kiosks", json={"name": name}, headers=staff.headers
        ),
        201,
    )
    key = Ed25519PrivateKey.generate()
    enrolled = check(
        await client.post(
            "/v1/kiosk/enroll",
            json={"enrollment_code": created["enrollment_code"], "public_key": public_key_b64(key)},
        )
    )
    return KioskIdentity(enrolled["kiosk_id"], property_id, key)


async def build_site(client: AppClient, admin: Person, name: str) -> Site:
    prop = check(
        await client.post(
            "/v1/staff/properties",
            json={"name": name, "timezone": "America/New_York"},
            headers=admin.headers,
        ),
        201,
    )
    pid = prop["id"]
    units = {}
    for label in ("1A", "4B"):
        units[label] = check(
            await client.post(
                f"/v1/staff/properties/{pid}/units", json={"label": label}, headers=admin.headers
            ),
            201,
        )["id"]
    staff = await invite(client, admin, pid, "staff")
    kiosk = await enroll_kiosk(client, staff, pid, f"{name} lockers")
    compartments = {}
    for label, size, purpose in (
        ("A1", "S", "parcel"),
        ("B1", "M", "parcel"),
        ("C1", "L", "parcel"),
        ("K1", "S", "key"),
    ):
        compartments[label] = check(
            await client.post(
                f"/v1/staff/kiosks/{kiosk.id}/compartments",
                json={"label": label, "size": size, "purpose": purpose},
                headers=staff.headers,
            ),
            201,
        )["id"]
    door = check(
        await client.post(
            f"/v1/staff/properties/{pid}/doors",
            json={"name": "Main entrance", "kiosk_id": kiosk.id, "open_to": "residents"},
            headers=staff.headers,
        ),
        201,
    )
    site = Site(pid, units, kiosk, compartments, door["id"])
    site.people["staff"] = staff
    site.people["resident"] = await invite(client, staff, pid, "resident", unit_id=units["4B"])
    site.people["neighbour"] = await invite(client, staff, pid, "resident", unit_id=units["1A"])
    site.people["vendor"] = await invite(client, staff, pid, "vendor", company="Acme Plumbing")
    site.people["courier"] = await invite(client, staff, pid, "courier")
    return site


async def make_admin(client: AppClient, settings: Settings) -> Person:
    email = f"admin{next(_counter)}@example.test"
    runtime = Runtime.create(settings)
    try:
        async with runtime.db.session() as session:
            await create_admin(session, runtime, email, PASSWORD, "Admin")
    finally:
        await runtime.db.dispose()
    return await login(client, email)


async def build_world(client: AppClient, settings: Settings) -> World:
    admin = await make_admin(client, settings)
    home = await build_site(client, admin, "Home Towers")
    other = await build_site(client, admin, "Other Plaza")
    return World(admin, home, other)


async def add_compartment(
    client: AppClient, site: Site, label: str, size: str, purpose: str = "parcel"
) -> str:
    """A new compartment at the site's kiosk (by its staff); its id."""
    created = check(
        await client.post(
            f"/v1/staff/kiosks/{site.kiosk.id}/compartments",
            json={"label": label, "size": size, "purpose": purpose},
            headers=site.people["staff"].headers,
        ),
        201,
    )
    return str(created["id"])
