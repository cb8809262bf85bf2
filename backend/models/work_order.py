"""Vendor visits (work orders), key items with their chain of custody, door status, break-glass.

Invariants held by ``backend.services.work_orders`` and ``backend.services.keys``:
- a key is in exactly one place: the office, one key compartment, or one person's hands
  (``state`` with ``compartment_id`` / ``holder_user_id`` set accordingly);
- every movement of a key appends one ``KeyCustody`` row (never updated) and one Event;
- a work order's windows are computed from its rule in the property's timezone, never stored
  pre-expanded, so a daylight-saving change cannot shift them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from backend.models.base import fk, id_field, json_field, time_field


class WorkOrder(SQLModel, table=True):
    """A vendor's visit: a one-off window or a weekly rule, doors they may open, keys they need.

    ``recurrence`` (weekly only): {"weekdays": ["tue", ...], "start_time": "09:00",
    "end_time": "12:00", "starts_on": "YYYY-MM-DD", "until": "YYYY-MM-DD"} in local time.
    ``starts_at`` is the first window's start and ``ends_at`` the last window's end (UTC);
    ``ends_early_at`` is set when staff shorten the visit: no access after it.
    """

    __tablename__ = "work_order"

    id: str = id_field()
    property_id: str = fk("property.id", ondelete="CASCADE")
    unit_id: str | None = fk("unit.id", nullable=True, ondelete="SET NULL")
    vendor_user_id: str = fk("user.id", ondelete="CASCADE")
    company: str | None = Field(default=None, max_length=200)
    description: str = Field(default="", max_length=2000)
    kind: str = Field(default="once", max_length=8)  # once | weekly
    starts_at: datetime = time_field()
    ends_at: datetime = time_field()
    recurrence: dict[str, Any] = json_field()
    door_ids: list[str] = json_field(list)
    key_ids: list[str] = json_field(list)
    state: str = Field(default="scheduled", max_length=12, index=True)
    ends_early_at: datetime | None = time_field(nullable=True)
    visit_started_at: datetime | None = time_field(nullable=True)
    last_ended_window_at: datetime | None = time_field(nullable=True)
    created_by: str | None = fk("user.id", nullable=True, index=False, ondelete="SET NULL")
    cancelled_at: datetime | None = time_field(nullable=True)
    cancel_reason: str | None = Field(default=None, max_length=500)
    created_at: datetime = time_field()


class KeyItem(SQLModel, table=True):
    """A physical key or fob (in its envelope) and where it is right now."""

    __tablename__ = "key_item"

    id: str = id_field()
    property_id: str = fk("property.id", ondelete="CASCADE")
    label: str = Field(max_length=64)
    kind: str = Field(default="unit", max_length=8)  # unit | master | fob
    unit_id: str | None = fk("unit.id", nullable=True, ondelete="SET NULL")
    state: str = Field(default="in_office", max_length=16, index=True)
    compartment_id: str | None = fk("compartment.id", nullable=True, ondelete="SET NULL")
    holder_user_id: str | None = fk("user.id", nullable=True, ondelete="SET NULL")
    since: datetime = time_field()
    due_back_at: datetime | None = time_field(nullable=True)
    work_order_id: str | None = fk("work_order.id", nullable=True, ondelete="SET NULL")
    last_overdue_alert_at: datetime | None = time_field(nullable=True)
    overdue_alerts: int = 0
    lockout_user_id: str | None = Field(default=None, max_length=32)
    lockout_expires_at: datetime | None = time_field(nullable=True)
    created_at: datetime = time_field()


class KeyCustody(SQLModel, table=True):
    """One movement of a key: append-only, the chain of custody staff read back."""

    __tablename__ = "key_custody"

    id: int | None = Field(default=None, primary_key=True)
    key_id: str = fk("key_item.id", ondelete="CASCADE")
    property_id: str = Field(max_length=32, index=True)
    action: str = Field(max_length=24)  # created|placed|checked_out|returned|retrieved|lost|...
    at: datetime = time_field()
    actor: str = Field(max_length=64)  # "user:<id>" | "kiosk:<id>" | "system"
    user_id: str | None = Field(default=None, max_length=32)  # the holder after this movement
    kiosk_id: str | None = Field(default=None, max_length=32)
    compartment_id: str | None = Field(default=None, max_length=32)
    work_order_id: str | None = Field(default=None, max_length=32)
    credential_id: str | None = Field(default=None, max_length=32)
    note: str | None = Field(default=None, max_length=500)


class DoorStatus(SQLModel, table=True):
    """Last reported state of a door, so held-open alerts can repeat until it closes."""

    __tablename__ = "door_status"

    door_id: str = Field(primary_key=True, max_length=32, foreign_key="door.id", ondelete="CASCADE")
    property_id: str = Field(max_length=32, index=True)
    state: str = Field(default="closed", max_length=8)  # open | closed
    changed_at: datetime = time_field()
    held_open_alerted_at: datetime | None = time_field(nullable=True)


class EmergencyRequest(SQLModel, table=True):
    """A break-glass request: issued at once, or after a second staff member approves it."""

    __tablename__ = "emergency_request"

    id: str = id_field()
    property_id: str = fk("property.id", ondelete="CASCADE")
    requested_by: str = fk("user.id", ondelete="CASCADE")
    device_id: str = Field(max_length=32)
    reason: str = Field(max_length=500)
    state: str = Field(default="pending", max_length=10)  # pending|approved|issued|denied|expired
    approved_by: str | None = Field(default=None, max_length=32)
    credential_id: str | None = Field(default=None, max_length=32)
    expires_at: datetime = time_field()
    created_at: datetime = time_field()
