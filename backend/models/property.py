"""Properties, their units, doors; the tenant roots everything else hangs from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.models.base import fk, id_field, json_field, time_field


class Property(SQLModel, table=True):
    """A building or community; ``policy`` holds parcel and access policy (see services.policy)."""

    id: str = id_field()
    name: str = Field(max_length=200)
    timezone: str = Field(default="UTC", max_length=64)
    policy: dict[str, Any] = json_field()
    created_at: datetime = time_field()


class Unit(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("property_id", "label"),)

    id: str = id_field()
    property_id: str = fk("property.id", ondelete="CASCADE")
    label: str = Field(max_length=32)
    created_at: datetime = time_field()


class Door(SQLModel, table=True):
    """A building door controlled by a kiosk; ``open_to`` says who has standing access."""

    id: str = id_field()
    property_id: str = fk("property.id", ondelete="CASCADE")
    kiosk_id: str = fk("kiosk.id", ondelete="CASCADE")
    name: str = Field(max_length=200)
    open_to: str = Field(default="residents", max_length=16)  # residents | units | staff
    unit_ids: list[str] = json_field(list)
    created_at: datetime = time_field()
