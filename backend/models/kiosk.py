"""Kiosks (locker banks and door controllers) and their compartments."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.models.base import fk, id_field, time_field


class Kiosk(SQLModel, table=True):
    """Only the kiosk's public key is stored: no shared secret can leak from the server."""

    id: str = id_field()
    property_id: str = fk("property.id", ondelete="CASCADE")
    name: str = Field(max_length=200)
    public_key: str | None = Field(default=None, max_length=64)
    enrollment_code_hash: str | None = Field(default=None, max_length=64, unique=True)
    enrollment_expires_at: datetime | None = time_field(nullable=True)
    enrolled_at: datetime | None = time_field(nullable=True)
    last_seen_at: datetime | None = time_field(nullable=True)
    # Bumped by each re-enrollment: a replaced kiosk computer starts its journal at seq 1 again.
    journal_epoch: int = 0
    created_at: datetime = time_field()


class KioskAssertionUse(SQLModel, table=True):
    """jti of every accepted kiosk assertion, kept until it expires: an assertion works once."""

    __tablename__ = "kiosk_assertion_use"

    __table_args__ = (UniqueConstraint("kiosk_id", "jti"),)

    id: int | None = Field(default=None, primary_key=True)
    kiosk_id: str = fk("kiosk.id", ondelete="CASCADE")
    jti: str = Field(max_length=128)
    expires_at: datetime = time_field(index=True)


class Compartment(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("kiosk_id", "label"),)

    id: str = id_field()
    kiosk_id: str = fk("kiosk.id", ondelete="CASCADE")
    label: str = Field(max_length=32)
    size: str = Field(max_length=2)  # S | M | L | XL
    purpose: str = Field(default="parcel", max_length=8)  # parcel | key
    state: str = Field(default="free", max_length=16)  # free | reserved | occupied | out_of_service
    created_at: datetime = time_field()
