"""Kiosk commands in transit between server processes, for deployments without Redis.

A process that does not hold a kiosk's channel writes the command here, addressed to the
process holding the kiosk's presence lease (``kiosk_presence.process_id``); that process polls
for its pending rows, sends the command over the channel and writes the kiosk's ack back, which
the sender is polling for (realtime/commands.py). Rows live seconds: the sender deletes its row
once answered or timed out, and the presence sweep purges what a dead sender left behind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from backend.models.base import fk, id_field, json_field, time_field


class KioskCommand(SQLModel, table=True):
    __tablename__ = "kiosk_command"

    id: str = id_field()
    kiosk_id: str = fk("kiosk.id", ondelete="CASCADE")
    process_id: str = Field(max_length=32, index=True)  # the holder it is addressed to
    command: dict[str, Any] = json_field()
    state: str = Field(default="pending", max_length=16)  # pending | sent | done
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = time_field()
    expires_at: datetime = time_field(index=True)
