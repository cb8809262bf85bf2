"""Push delivery bookkeeping: one row per (notification, device), and per-user preferences.

A ``push`` Outbox row (written with its event) is expanded by the dispatcher into one
``PushDelivery`` per device entitled to it. Deliveries are claimed with a lease and a fencing
token (``lease_token``): a worker records an outcome only while its token still holds, so a
worker that froze past its lease can never overwrite the result of the worker that took over.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.models.base import fk, time_field

DELIVERY_ID = BigInteger().with_variant(Integer(), "sqlite")


class PushDelivery(SQLModel, table=True):
    """One push message to one device; states: pending | sent | failed | invalid_token | cancelled."""

    __tablename__ = "push_delivery"
    __table_args__ = (UniqueConstraint("outbox_id", "device_id"),)

    id: int | None = Field(
        default=None, sa_column=Column(DELIVERY_ID, primary_key=True, autoincrement=True)
    )
    outbox_id: int = Field(index=True)
    event_id: int = Field(sa_column=Column(DELIVERY_ID, nullable=False, index=True))
    property_id: str = Field(max_length=32, index=True)
    event_type: str = Field(max_length=64)
    user_id: str = fk("user.id", ondelete="CASCADE")
    device_id: str = fk("device.id", ondelete="CASCADE")
    collapse_key: str = Field(max_length=64)
    state: str = Field(default="pending", max_length=16, index=True)
    attempts: int = 0
    lease_token: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = time_field(nullable=True)
    due_at: datetime = time_field()  # earliest send time (quiet hours defer reminders)
    next_attempt_at: datetime = time_field(index=True)
    token_fingerprint: str | None = Field(default=None, max_length=16)
    message_id: str | None = Field(default=None, max_length=200)
    last_error: str | None = Field(default=None, max_length=200)
    created_at: datetime = time_field()
    done_at: datetime | None = time_field(nullable=True)


class NotificationPreference(SQLModel, table=True):
    """A user's choice for one event type; no row means the type's default (push on)."""

    __tablename__ = "notification_preference"
    __table_args__ = (UniqueConstraint("user_id", "event_type"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = fk("user.id", ondelete="CASCADE")
    event_type: str = Field(max_length=64)
    push: bool = True
    updated_at: datetime = time_field()
