"""Response views of the staff API (named ``...View`` so they never clash with models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from backend.models import Compartment, Door, Kiosk, Property, Unit


class PropertyView(msgspec.Struct):
    id: str
    name: str
    timezone: str
    policy: dict[str, Any]

    @classmethod
    def of(cls, p: Property) -> PropertyView:
        return cls(p.id, p.name, p.timezone, p.policy)


class UnitView(msgspec.Struct):
    id: str
    property_id: str
    label: str

    @classmethod
    def of(cls, u: Unit) -> UnitView:
        return cls(u.id, u.property_id, u.label)


class KioskView(msgspec.Struct):
    id: str
    property_id: str
    name: str
    enrolled: bool
    last_seen_at: datetime | None

    @classmethod
    def of(cls, k: Kiosk) -> KioskView:
        return cls(k.id, k.property_id, k.name, k.public_key is not None, k.last_seen_at)


class KioskCreatedView(msgspec.Struct):
    id: str
    property_id: str
    name: str
    enrollment_code: str
    enrollment_expires_at: datetime


class CompartmentView(msgspec.Struct):
    id: str
    kiosk_id: str
    label: str
    size: str
    purpose: str
    state: str

    @classmethod
    def of(cls, c: Compartment) -> CompartmentView:
        return cls(c.id, c.kiosk_id, c.label, c.size, c.purpose, c.state)


class DoorView(msgspec.Struct):
    id: str
    property_id: str
    kiosk_id: str
    name: str
    open_to: str
    unit_ids: list[str]

    @classmethod
    def of(cls, d: Door) -> DoorView:
        return cls(d.id, d.property_id, d.kiosk_id, d.name, d.open_to, list(d.unit_ids))


class MemberView(msgspec.Struct):
    user_id: str
    email: str
    name: str
    role: str
    unit_id: str | None
    company: str | None


class InvitationView(msgspec.Struct):
    id: str
    code: str
    expires_at: datetime


class EventView(msgspec.Struct):
    """The realtime envelope, also used by the audit export."""

    id: str
    type: str
    occurred_at: datetime
    property_id: str
    data: dict[str, Any]


class AuditEventView(msgspec.Struct):
    id: str
    type: str
    severity: str
    actor: str
    subject: str
    occurred_at: datetime
    recorded_at: datetime
    property_id: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


class ChainVerificationView(msgspec.Struct):
    property_id: str
    events_checked: int
    valid: bool
    first_invalid_event_id: str | None
