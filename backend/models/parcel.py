"""Parcels from courier intake to pickup, PIN attempts, delivery holds and job leases.

Invariants held by the database, not only by code:
- never two active parcels in one compartment: a partial unique index on ``compartment_id``
  over the states ``assigned`` and ``deposited`` (SQLite and PostgreSQL);
- a duplicate scan is the same parcel: ``(kiosk_id, tracking)`` is unique.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from backend.models.base import fk, id_field, time_field

# States in which a parcel occupies its compartment.
ACTIVE_STATES = ("assigned", "deposited")
STATES = (
    "announced",  # known but in no tracked compartment (offline intake conflict)
    "assigned",  # compartment reserved, door open, courier placing it
    "deposited",  # door closed on it: waiting for the resident
    "picked_up",
    "overflowed",  # at the office (moved by staff, or handed over at intake)
    "returned",  # returned to the carrier
    "cancelled",  # courier gave up or the door never closed
)
_ACTIVE_SQL = "state IN ('assigned', 'deposited')"


class Parcel(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("kiosk_id", "tracking", name="uq_parcel_kiosk_tracking"),
        Index(
            "uq_parcel_active_compartment",
            "compartment_id",
            unique=True,
            sqlite_where=text(_ACTIVE_SQL),
            postgresql_where=text(_ACTIVE_SQL),
        ),
    )

    id: str = id_field()
    property_id: str = fk("property.id", ondelete="CASCADE")
    kiosk_id: str | None = fk("kiosk.id", nullable=True, ondelete="CASCADE")
    unit_id: str = fk("unit.id", ondelete="CASCADE")
    compartment_id: str | None = fk("compartment.id", nullable=True, ondelete="SET NULL")
    carrier: str = Field(max_length=64)
    tracking: str = Field(max_length=64)
    size: str = Field(max_length=2)  # S | M | L | XL
    state: str = Field(default="assigned", max_length=16, index=True)
    # PIN: only a slow hash is stored ("scrypt$<n>$<r>$<p>$<salt b64url>$<hash b64url>");
    # the digits are re-derived server-side from pin_nonce with a key from the KEK.
    pin_nonce: str | None = Field(default=None, max_length=32)
    pin_hash: str | None = Field(default=None, max_length=200)
    location: str | None = Field(default=None, max_length=200)  # where it is when not in a locker
    offline: bool = False  # deposited while the kiosk was offline (reconciled from its journal)
    created_by: str = Field(default="", max_length=64)  # actor string of the intake
    created_at: datetime = time_field(index=True)
    assigned_at: datetime | None = time_field(nullable=True)
    deposited_at: datetime | None = time_field(nullable=True, index=True)
    reminded_at: datetime | None = time_field(nullable=True)
    overflow_due_at: datetime | None = time_field(nullable=True)
    overflowed_at: datetime | None = time_field(nullable=True)
    picked_up_at: datetime | None = time_field(nullable=True)
    returned_at: datetime | None = time_field(nullable=True)
    cancelled_at: datetime | None = time_field(nullable=True)


class PinAttempt(SQLModel, table=True):
    """Every PIN entered at a kiosk (online or from the journal), for budgets and the report."""

    __tablename__ = "pin_attempt"

    id: int | None = Field(default=None, primary_key=True)
    property_id: str = fk("property.id", ondelete="CASCADE")
    kiosk_id: str = fk("kiosk.id", ondelete="CASCADE")
    unit_id: str | None = Field(default=None, max_length=32, index=True)
    unit_label: str = Field(max_length=32)
    outcome: str = Field(max_length=16)  # granted | wrong_pin | locked_out
    channel: str = Field(default="online", max_length=8)  # online | offline
    at: datetime = time_field(index=True)


class DeliveryHold(SQLModel, table=True):
    """A unit's vacation hold: reminders pause until ``until``."""

    __tablename__ = "delivery_hold"

    unit_id: str = Field(foreign_key="unit.id", primary_key=True, max_length=32, ondelete="CASCADE")
    property_id: str = fk("property.id", ondelete="CASCADE")
    until: datetime = time_field()
    set_by: str = Field(max_length=32)
    created_at: datetime = time_field()


class JobLease(SQLModel, table=True):
    """Which process runs a scheduled job now: one row per job, taken while ``until`` is past."""

    __tablename__ = "job_lease"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=64)
    until: datetime = time_field()
