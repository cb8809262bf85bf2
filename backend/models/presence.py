"""Which server process holds each kiosk's command channel, as a lease.

One row per connected kiosk: the holding process (the realtime hub's ``process_id``) keeps
``lease_until`` in the future while the socket is open. A row whose lease ran out belongs to a
process that died (or lost its database) without saying so; any other process's presence
sweeper then records ``kiosk.offline`` and removes the row (realtime/presence.py). The row is
the source of truth for "is this kiosk connected anywhere", with or without Redis.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from backend.models.base import fk, time_field


class KioskPresence(SQLModel, table=True):
    __tablename__ = "kiosk_presence"

    kiosk_id: str = Field(
        primary_key=True, foreign_key="kiosk.id", ondelete="CASCADE", max_length=32
    )
    property_id: str = fk("property.id", index=False, ondelete="CASCADE")
    process_id: str = Field(max_length=32, index=True)
    connected_at: datetime = time_field()
    lease_until: datetime = time_field(index=True)
