"""``concierge demo``: seed a demo property so a newcomer has something to open.

Passwords are random, printed once, and exist only in this demo database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from sqlmodel import select

from backend.crypto import sha256_hex
from backend.models import Compartment, Door, Kiosk, Membership, Property, Unit, User
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services.accounts import hash_password
from backend.services.events import record_event
from backend.services.kiosks import _enrollment_code

DEMO_PROPERTY = "Maple Court (demo)"
UNITS = ["1A", "1B", "2A", "2B", "3A", "3B", "4A", "4B"]
PARCEL_COMPARTMENTS = [
    ("A1", "S"),
    ("A2", "S"),
    ("A3", "S"),
    ("B1", "M"),
    ("B2", "M"),
    ("B3", "M"),
    ("C1", "L"),
    ("C2", "L"),
    ("D1", "XL"),
]
KEY_COMPARTMENTS = ["K1", "K2", "K3"]


@dataclass
class DemoSeed:
    created: bool
    property_id: str
    kiosk_id: str
    enrollment_code: str | None
    accounts: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (email, password)


async def seed_demo(runtime: Runtime) -> DemoSeed:
    """Create the demo property once; a second run reports what exists and changes nothing."""
    async with runtime.db.session() as session:
        existing = (
            await session.exec(select(Property).where(Property.name == DEMO_PROPERTY))
        ).first()
        if existing is not None:
            kiosk = (
                await session.exec(select(Kiosk).where(Kiosk.property_id == existing.id))
            ).first()
            return DemoSeed(False, existing.id, kiosk.id if kiosk else "", None)
        now = utcnow()
        prop = Property(name=DEMO_PROPERTY, timezone="America/New_York", policy={})
        session.add(prop)
        await session.flush()
        units = {label: Unit(property_id=prop.id, label=label) for label in UNITS}
        session.add_all(units.values())
        code = _enrollment_code()
        kiosk = Kiosk(
            property_id=prop.id,
            name="Lobby lockers",
            enrollment_code_hash=sha256_hex(code),
            enrollment_expires_at=now + timedelta(days=1),
        )
        session.add(kiosk)
        await session.flush()
        for label, size in PARCEL_COMPARTMENTS:
            session.add(Compartment(kiosk_id=kiosk.id, label=label, size=size, purpose="parcel"))
        for label in KEY_COMPARTMENTS:
            session.add(Compartment(kiosk_id=kiosk.id, label=label, size="S", purpose="key"))
        session.add(
            Door(property_id=prop.id, kiosk_id=kiosk.id, name="Main entrance", open_to="residents")
        )
        seed = DemoSeed(True, prop.id, kiosk.id, code)
        people = [
            ("resident", "resident@demo.concierge", "Riley Resident", units["4B"].id, None),
            ("vendor", "vendor@demo.concierge", "Pat Plumber", None, "Acme Plumbing"),
            ("courier", "courier@demo.concierge", "Casey Courier", None, None),
            ("staff", "staff@demo.concierge", "Sam Staff", None, None),
        ]
        for role, email, name, unit_id, company in people:
            password = secrets.token_urlsafe(12)
            user = User(
                email=email, name=name, password_hash=await hash_password(runtime, password)
            )
            session.add(user)
            await session.flush()
            session.add(
                Membership(
                    user_id=user.id,
                    property_id=prop.id,
                    role=role,
                    unit_id=unit_id,
                    company=company,
                    can_emergency=role == "staff",
                )
            )
            seed.accounts[role] = (email, password)
        await session.flush()
        await record_event(
            session,
            property_id=prop.id,
            type="property.created",
            actor="system",
            subject=f"property:{prop.id}",
            payload={"name": DEMO_PROPERTY, "demo": True},
            notify=False,
        )
        return seed
