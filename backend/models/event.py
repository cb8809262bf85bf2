"""The append-only Event table: audit trail, realtime source and catch-up feed in one.

Invariants (see services/events.py): rows are only inserted, never updated; ``hash`` chains
each property's events (``prev_hash`` is the previous event's ``hash`` of the same property),
so an edited or deleted row breaks verification; ids become visible in increasing order because
appends are serialised until commit (a reader never sees 102 before 101).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Integer
from sqlmodel import Field, SQLModel

from backend.models.base import json_field, time_field

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
EVENT_ID = BigInteger().with_variant(Integer(), "sqlite")


class Event(SQLModel, table=True):
    id: int | None = Field(
        default=None, sa_column=Column(EVENT_ID, primary_key=True, autoincrement=True)
    )
    property_id: str = Field(max_length=32, index=True)
    type: str = Field(max_length=64, index=True)
    severity: str = Field(default="info", max_length=8)  # info | warning | critical
    actor: str = Field(max_length=64)  # "user:<id>", "kiosk:<id>", "system"
    subject: str = Field(default="", max_length=64)  # "parcel:<id>", "key:<id>", ...
    unit_id: str | None = Field(default=None, max_length=32, index=True)
    user_id: str | None = Field(default=None, max_length=32, index=True)
    payload: dict[str, Any] = json_field()
    occurred_at: datetime = time_field()
    recorded_at: datetime = time_field()
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class Outbox(SQLModel, table=True):
    """Work caused by a committed change (today: push notifications for an event).

    Written in the same transaction as the change; claimed with a lease and a fencing token
    by dispatchers (push/), so at-least-once delivery survives crashes.
    """

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(default="push", max_length=16, index=True)
    event_id: int | None = Field(default=None, index=True)
    state: str = Field(default="pending", max_length=12, index=True)  # pending|sent|failed|skipped
    attempts: int = 0
    lease_token: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = time_field(nullable=True)
    next_attempt_at: datetime = time_field(index=True)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = time_field()
    done_at: datetime | None = time_field(nullable=True)
