"""``GET /v1/events``: the caller's event history for catch-up, in the realtime envelope.

The same rule as the websocket decides what is listed (realtime/visibility.py). Ids increase and
are strings; ``after`` is the last id the app has seen (``next_cursor`` carries on a long list).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get
from litestar.di import Provide
from litestar.params import Parameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, SessionDep, provide_user
from backend.models import Event
from backend.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from backend.problems import responses
from realtime.protocol import envelope, parse_event_id
from realtime.visibility import Audience, may_see, visible_clause


class EventView(msgspec.Struct):
    """One event: the same envelope as ``WS /v1/realtime``."""

    id: Annotated[str, msgspec.Meta(description="Increasing event id (a decimal string)")]
    type: Annotated[str, msgspec.Meta(description="Dotted event type, e.g. parcel.deposited")]
    occurred_at: str
    property_id: str
    data: dict[str, Any]


class EventPage(msgspec.Struct):
    items: list[EventView]
    next_cursor: str | None


def _event_id(value: str | None, name: str) -> int:
    if value is None:
        return 0
    parsed = parse_event_id(value)
    if parsed is None:
        raise errors.ValidationFailed(f"{name} must be an event id")
    return parsed


@get(
    "/events",
    summary="The caller's events after an id (catch-up for the realtime channel)",
    description=(
        "Events the caller may see (residents: their unit's and their own; vendors: their own; "
        "staff: their properties'), oldest first, in the realtime envelope. Pass the last id "
        "seen as `after`; follow `next_cursor` while it is not null."
    ),
    dependencies={"actor": Provide(provide_user)},
    responses=responses(),
)
async def list_events(
    actor: ActorDep,
    session: SessionDep,
    after: Annotated[
        str | None,
        Parameter(max_length=20, description="Last event id seen (exclusive)"),
    ] = None,
    cursor: Annotated[str | None, Parameter(max_length=64)] = None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT)] = 100,
) -> EventPage:
    start = _event_id(after, "after")
    if cursor is not None:
        start = max(start, _event_id(decode_cursor(cursor), "cursor"))
    audience = Audience.of(actor)
    rows = (
        await session.exec(
            select(Event)
            .where(col(Event.id) > start, visible_clause(audience))
            .order_by(col(Event.id))
            .limit(limit + 1)
        )
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [EventView(**envelope(row)) for row in rows if may_see(audience, row)]
    next_cursor = encode_cursor(rows[-1].id) if more and rows and rows[-1].id else None
    return EventPage(items, next_cursor)


handlers = [list_events]
