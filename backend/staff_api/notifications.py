"""Push delivery status for staff: each notification of a property with its per-device deliveries.

A notification is one event's push (the ``push`` outbox row); its ``state`` is ``pending``
(not yet expanded), ``delivering``, ``sent`` (every device settled, at least one reached),
``failed`` (retries ran out, or no device could be reached) or ``skipped`` (no push template,
or nobody to notify). Skipped notifications are listed only when asked for with ``state``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import get
from litestar.params import Parameter, QueryParameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, SessionDep
from backend.models import Device, Event, Outbox
from backend.models.push import PushDelivery
from backend.pagination import Page, decode_cursor, encode_cursor
from backend.problems import responses
from backend.scoping import staff_property

Id = Annotated[str, Parameter(max_length=32)]
State = Literal["pending", "delivering", "sent", "failed", "skipped"]


class DeliveryView(msgspec.Struct):
    id: str
    user_id: str
    device_id: str
    platform: str
    token_fingerprint: str | None
    state: str  # pending | sent | failed | invalid_token | cancelled
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    done_at: datetime | None


class NotificationView(msgspec.Struct):
    id: str
    event_id: str
    event_type: str
    severity: str
    state: str
    last_error: str | None
    created_at: datetime
    deliveries: list[DeliveryView]


@get(
    "/properties/{property_id:str}/notifications",
    summary="Push notifications of the property with their delivery status, newest first",
    responses=responses(errors.NotFound),
)
async def list_notifications(
    property_id: Id,
    actor: ActorDep,
    session: SessionDep,
    state_filter: Annotated[State | None, QueryParameter(name="state")] = None,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Parameter(max_length=64)] = None,
) -> Page[NotificationView]:
    await staff_property(session, actor, property_id)
    statement = (
        select(Outbox, Event)
        .join(Event, col(Event.id) == col(Outbox.event_id))
        .where(Outbox.topic == "push", Event.property_id == property_id)
    )
    if state_filter is None:
        statement = statement.where(Outbox.state != "skipped")
    else:
        statement = statement.where(Outbox.state == state_filter)
    before = decode_cursor(cursor)
    if before is not None:
        if not before.isdigit():
            raise errors.ValidationFailed("cursor is not valid")
        statement = statement.where(col(Outbox.id) < int(before))
    rows = list(
        (await session.exec(statement.order_by(col(Outbox.id).desc()).limit(limit + 1))).all()
    )
    next_cursor = encode_cursor(str(rows[limit - 1][0].id)) if len(rows) > limit else None
    rows = rows[:limit]
    by_outbox: dict[int, list[DeliveryView]] = defaultdict(list)
    outbox_ids = [outbox.id for outbox, _ in rows]
    if outbox_ids:
        deliveries = (
            await session.exec(
                select(PushDelivery, Device)
                .join(Device, col(Device.id) == col(PushDelivery.device_id))
                .where(col(PushDelivery.outbox_id).in_(outbox_ids))
                .order_by(col(PushDelivery.id))
            )
        ).all()
        for d, device in deliveries:
            by_outbox[d.outbox_id].append(
                DeliveryView(
                    str(d.id),
                    d.user_id,
                    d.device_id,
                    device.platform,
                    d.token_fingerprint,
                    d.state,
                    d.attempts,
                    d.last_error,
                    d.next_attempt_at if d.state == "pending" else None,
                    d.done_at,
                )
            )
    items = [
        NotificationView(
            str(outbox.id),
            str(event.id),
            event.type,
            event.severity,
            outbox.state,
            outbox.last_error,
            outbox.created_at,
            by_outbox.get(outbox.id or 0, []),
        )
        for outbox, event in rows
    ]
    return Page(items, next_cursor)


handlers = [list_notifications]
