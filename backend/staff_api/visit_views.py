"""Views of vendor visits, keys and their custody (staff API and phone app share them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import Door, KeyItem, WorkOrder
from backend.models.work_order import KeyCustody
from backend.services import work_orders


class WindowView(msgspec.Struct):
    starts_at: datetime
    ends_at: datetime


class RecurrenceView(msgspec.Struct):
    weekdays: list[str]
    start_time: str
    end_time: str
    starts_on: str
    until: str


class VisitDoorView(msgspec.Struct):
    id: str
    name: str
    kiosk_id: str


class VisitKeyView(msgspec.Struct):
    id: str
    label: str
    kind: str
    state: str
    compartment_id: str | None


class WorkOrderView(msgspec.Struct):
    id: str
    property_id: str
    unit_id: str | None
    vendor_user_id: str
    company: str | None
    description: str
    kind: str
    starts_at: datetime
    ends_at: datetime
    recurrence: RecurrenceView | None
    door_ids: list[str]
    key_ids: list[str]
    doors: list[VisitDoorView]
    keys: list[VisitKeyView]
    state: str
    ends_early_at: datetime | None
    current_window: WindowView | None
    next_window: WindowView | None
    created_at: datetime


async def work_order_view(session: AsyncSession, wo: WorkOrder, now: datetime) -> WorkOrderView:
    current, upcoming = await work_orders.window_info(session, wo, now)
    doors: list[Door] = []
    if wo.door_ids:
        doors = list((await session.exec(select(Door).where(col(Door.id).in_(wo.door_ids)))).all())
    keys: list[KeyItem] = []
    if wo.key_ids:
        keys = list(
            (await session.exec(select(KeyItem).where(col(KeyItem.id).in_(wo.key_ids)))).all()
        )
    ends_at = min(wo.ends_at, wo.ends_early_at) if wo.ends_early_at else wo.ends_at
    return WorkOrderView(
        id=wo.id,
        property_id=wo.property_id,
        unit_id=wo.unit_id,
        vendor_user_id=wo.vendor_user_id,
        company=wo.company,
        description=wo.description,
        kind=wo.kind,
        starts_at=wo.starts_at,
        ends_at=ends_at,
        recurrence=msgspec.convert(wo.recurrence, RecurrenceView) if wo.recurrence else None,
        door_ids=list(wo.door_ids),
        key_ids=list(wo.key_ids),
        doors=[VisitDoorView(d.id, d.name, d.kiosk_id) for d in doors],
        keys=[
            VisitKeyView(k.id, k.label, k.kind, k.state, k.compartment_id)
            for k in sorted(keys, key=lambda k: wo.key_ids.index(k.id))
        ],
        state=wo.state,
        ends_early_at=wo.ends_early_at,
        current_window=WindowView(current.starts_at, current.ends_at) if current else None,
        next_window=WindowView(upcoming.starts_at, upcoming.ends_at) if upcoming else None,
        created_at=wo.created_at,
    )


class HolderView(msgspec.Struct):
    user_id: str
    since: datetime


class KeyView(msgspec.Struct):
    id: str
    property_id: str
    label: str
    kind: str
    unit_id: str | None
    state: str
    compartment_id: str | None
    holder: HolderView | None
    due_back_at: datetime | None
    overdue: bool
    work_order_id: str | None
    since: datetime

    @classmethod
    def of(cls, key: KeyItem, now: datetime) -> KeyView:
        holder = HolderView(key.holder_user_id, key.since) if key.holder_user_id else None
        overdue = (
            key.state == "checked_out" and key.due_back_at is not None and key.due_back_at < now
        )
        return cls(
            id=key.id,
            property_id=key.property_id,
            label=key.label,
            kind=key.kind,
            unit_id=key.unit_id,
            state=key.state,
            compartment_id=key.compartment_id,
            holder=holder,
            due_back_at=key.due_back_at,
            overdue=overdue,
            work_order_id=key.work_order_id,
            since=key.since,
        )


class CustodyView(msgspec.Struct):
    id: str
    key_id: str
    action: str
    at: datetime
    actor: str
    user_id: str | None
    kiosk_id: str | None
    compartment_id: str | None
    work_order_id: str | None
    credential_id: str | None
    note: str | None

    @classmethod
    def of(cls, row: KeyCustody) -> CustodyView:
        return cls(
            id=str(row.id),
            key_id=row.key_id,
            action=row.action,
            at=row.at,
            actor=row.actor,
            user_id=row.user_id,
            kiosk_id=row.kiosk_id,
            compartment_id=row.compartment_id,
            work_order_id=row.work_order_id,
            credential_id=row.credential_id,
            note=row.note,
        )


class IssuedCredentialView(msgspec.Struct):
    """Same shape as ``POST /v1/credentials`` answers."""

    id: str
    token: str
    kiosk_id: str | None
    target: str
    not_before: datetime
    expires_at: datetime

    @classmethod
    def of(cls, credential: Any) -> IssuedCredentialView:
        return cls(
            credential.id,
            credential.token,
            credential.kiosk_id,
            credential.target,
            credential.not_before,
            credential.expires_at,
        )


class IssuedCredentialsView(msgspec.Struct):
    credentials: list[IssuedCredentialView]
